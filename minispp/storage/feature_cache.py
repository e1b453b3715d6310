"""HDF5 feature caches that survive interruption.

One cache holds one representation of every image of one split: for a (model checkpoint,
data set, split, layer, scale, view), a (N, D) float32 matrix, the image ids, their labels
and the provenance (checkpoint checksum, minispp version, arguments, creation time).

While it is being written the cache is a folder ``<path>.parts/`` of shards, each the
features of a fixed range of images, each written to a temporary file and renamed into
place when complete, plus ``identity.json``. A killed extraction leaves only whole shards;
running the same extraction again computes the missing ones. When every shard is there
they are merged, again through a temporary file and a rename, into ``<path>`` and the
folder is removed. So a reader sees either no cache, an unfinished one (and is told so),
or a whole one; never a half-written record.

The identity (what the features are: checkpoint checksum, net, layer, scale, view, data set
and split, the image ids, the class list in order) is compared on every resume and every
read that states what it expects: features from another model or made with other arguments
are refused, naming the fields that differ. The class list is part of it because labels are
indices into it: two caches whose lists differ must never be paired (``minispp svm``).

Nothing is created before the first shard is written, so a command refused for its
arguments leaves nothing behind; an unfinished folder that holds no shard yet does not block
a corrected command (its identity is replaced). An existing file that is not a feature cache
is never overwritten, and a damaged shard is named with the way to recover (delete it and
run the same command again: it is recomputed).

File layout:
    /features  (N, D) float32      /valid  (N,) bool: False where the image was unreadable
                                   (skipped with --skip-unreadable; its row is zero)
    /ids       (N,) utf-8 strings  /labels (N,) int64 or (N, K) int8
    attrs: format, identity (JSON), provenance (JSON), classes (JSON)
"""
import hashlib
import json
import os
import shutil
import time

import h5py
import numpy as np

from minispp.storage.checkpoint import atomic_h5

FORMAT = "minispp-features-1"


class CacheMismatch(ValueError):
    """A cache made by another model or with other arguments than the ones asked for."""


def ids_digest(ids):
    """SHA-256 (hex, 16 characters) of the image ids in order."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _differences(theirs, mine):
    keys = sorted(set(theirs) | set(mine))
    return [f"{k}: cache has {theirs.get(k)!r}, asked for {mine.get(k)!r}"
            for k in keys if theirs.get(k) != mine.get(k)]


def check_identity(path, theirs, mine, advice="Remove it, or choose another output file"):
    """CacheMismatch naming every field where theirs (the cache's) differs from mine."""
    diff = _differences(theirs, mine)
    if diff:
        old = theirs.get("classes") is None and mine.get("classes") is not None
        note = (" (it was written before the class list was part of a cache's identity: "
                "extract it again)" if old else "")
        raise CacheMismatch(f"feature cache {path} was made by another model or with other "
                            f"arguments ({'; '.join(diff)}){note}. {advice}")


def existing_identity(path):
    """The identity of the finished feature cache at path, which exists; anything else there
    (a checkpoint, another file, a folder, a damaged cache) is a ValueError refusing to
    overwrite it."""
    what = f"--out {path} exists and is not a minispp feature cache"
    advice = "refusing to overwrite it: choose another output file"
    if not os.path.isfile(path):
        raise ValueError(f"{what} (not a regular file); {advice}")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if fmt != FORMAT:
                raise ValueError(f"{what} (HDF5 format {fmt!r}, expected {FORMAT!r}); {advice}")
            return json.loads(f.attrs["identity"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} or is damaged ({type(err).__name__}: {err}); {advice}, "
                         f"or delete it if it is a damaged cache") from None


def check_output(path):
    """ValueError unless path is free or holds a feature cache (which is then checked for
    its identity by CacheWriter): the check to make on every output before starting."""
    path = os.fspath(path)
    if os.path.lexists(path):
        existing_identity(path)
    parts = path + ".parts"
    if os.path.lexists(parts) and not os.path.isdir(parts):
        raise ValueError(f"{parts} exists and is not the folder of an unfinished feature "
                         f"cache; move it away or choose another output file")


def _remove_stale_tmp(path):
    """Remove the temporary files that killed merges into path left (atomic_h5 names them
    .<name>.tmp<pid>; a whole cache's size each), those of processes no longer running."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.tmp"
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        pid = n[len(prefix):]
        if not (n.startswith(prefix) and pid.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                                    # its writer is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        try:
            os.remove(os.path.join(folder, n))
        except OSError:
            pass


class CacheWriter:
    """Writes (or resumes writing) the cache at path.

    identity: JSON-able dict of what the features are (compared on resume); the number of
    images, the digest of the ids and the class list are added to it. ids: the image ids in
    order; labels: (N,) or (N, K) array, indices into classes; classes: class names;
    provenance: JSON-able dict stored as is (version, arguments, time). shard_size: images
    per shard. After construction, ``complete`` says whether the cache already exists
    whole, and ``pending()`` lists the (start, stop) image ranges still to compute.
    Construction checks everything (an existing file that is not a feature cache, a
    mismatched cache or unfinished folder, a damaged shard: ValueError) and writes nothing;
    the ``.parts`` folder is made when the first shard is written.
    """

    def __init__(self, path, identity, ids, labels, classes, provenance=None, shard_size=64):
        self.path = os.fspath(path)
        self.parts = self.path + ".parts"
        self.classes = [str(c) for c in classes]
        self.identity = dict(identity, n=len(ids), ids_digest=ids_digest(list(ids)),
                             classes=self.classes)
        self.ids, self.labels = list(ids), np.asarray(labels)
        self.provenance = dict(provenance or {})
        if isinstance(shard_size, bool) or int(shard_size) != shard_size or shard_size < 1:
            raise ValueError(f"shard size must be a positive integer, got {shard_size!r}")
        self.shard_size = int(shard_size)
        self._check_labels()
        self.complete = False
        self._started = False
        if os.path.lexists(self.path):
            self._check_existing_file()
            self.complete = True
            return
        if os.path.lexists(self.parts) and not os.path.isdir(self.parts):
            raise ValueError(f"{self.parts} exists and is not the folder of an unfinished "
                             f"feature cache; move it away or choose another output file")
        ident_path = os.path.join(self.parts, "identity.json")
        shards = self._shard_files()
        if os.path.exists(ident_path):
            try:
                with open(ident_path) as fh:
                    stored = json.load(fh)
                theirs, size = stored["identity"], int(stored["shard_size"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                if shards:
                    raise ValueError(f"{ident_path} is damaged ({err}); the shards beside it "
                                     f"cannot be checked: delete {self.parts} and run the "
                                     f"command again") from None
                theirs = None
            if theirs is not None and (shards or not _differences(theirs, self.identity)):
                check_identity(self.path, theirs, self.identity,
                               advice=f"Delete {self.parts} (the unfinished cache) or choose "
                                      f"another output file")
                self.shard_size, self._started = size, True
            # an unfinished folder with no shard yet (a refused or interrupted start): its
            # identity is rewritten by the first shard of this run
        elif shards:
            raise ValueError(f"{self.parts} holds shards but no identity.json, so they cannot "
                             f"be checked: delete {self.parts} and run the command again")
        self._check_shards()

    def _check_labels(self):
        n, k = len(self.ids), len(self.classes)
        lab = self.labels
        if len(lab) != n or lab.ndim not in (1, 2) or (lab.ndim == 2 and lab.shape[1] != k):
            raise ValueError(f"feature cache {self.path}: labels of shape {lab.shape} do not "
                             f"fit {n} images and {k} classes")
        if lab.ndim == 1 and n and (lab.min() < 0 or lab.max() >= k):
            raise ValueError(f"feature cache {self.path}: labels must be class indices in "
                             f"[0, {k}), got {lab.min()}..{lab.max()}")

    def _check_existing_file(self):
        """The existing self.path must be a feature cache of this identity; nothing else is
        overwritten or reused."""
        check_identity(self.path, existing_identity(self.path), self.identity)

    def _shard_files(self):
        if not os.path.isdir(self.parts):
            return []
        return sorted(n for n in os.listdir(self.parts) if n.startswith("shard-") and n.endswith(".h5"))

    def _check_shards(self):
        """Every shard present opens and holds the rows of its range; a damaged one
        (truncated, not HDF5, wrong shape) is a ValueError naming it and the way out."""
        expected = {os.path.basename(self._shard_path(a)): b - a for a, b in self.ranges()}
        for name in self._shard_files():
            path = os.path.join(self.parts, name)
            advice = (f"delete {path} and run the same command again (that shard is "
                      f"recomputed, the others are kept)")
            if name not in expected:
                raise ValueError(f"feature cache shard {path} is not one of this cache's "
                                 f"ranges (shard size {self.shard_size}): {advice}")
            try:
                with h5py.File(path, "r") as f:
                    shape, vshape = f["features"].shape, f["valid"].shape
            except (OSError, KeyError) as err:
                raise ValueError(f"feature cache shard {path} is damaged ({err}): "
                                 f"{advice}") from None
            rows = expected[name]
            if len(shape) != 2 or shape[0] != rows or vshape != (rows,):
                raise ValueError(f"feature cache shard {path} holds features {shape} and "
                                 f"flags {vshape}, expected {rows} rows: {advice}")

    def _start(self):
        """Make the parts folder and its identity.json (first shard of this run)."""
        if self._started:
            return
        ident_path = os.path.join(self.parts, "identity.json")
        try:
            os.makedirs(self.parts, exist_ok=True)
            tmp = ident_path + f".tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump({"identity": self.identity, "shard_size": self.shard_size}, fh, indent=1)
            os.replace(tmp, ident_path)
        except OSError as err:
            raise ValueError(f"cannot write the feature cache {self.path}: {err}") from None
        self._started = True

    def _shard_path(self, start):
        return os.path.join(self.parts, f"shard-{start:09d}.h5")

    def ranges(self):
        n = len(self.ids)
        return [(s, min(n, s + self.shard_size)) for s in range(0, n, self.shard_size)]

    def pending(self):
        if self.complete:
            return []
        return [(a, b) for a, b in self.ranges() if not os.path.exists(self._shard_path(a))]

    def write(self, start, features, valid):
        """Store the shard beginning at image ``start``: features (n, D), valid (n,) bool."""
        stop = dict(self.ranges())[start]
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) != stop - start or len(valid) != stop - start:
            raise ValueError(f"shard {start}:{stop} of {self.path} needs {stop - start} rows, "
                             f"got features {features.shape} and {len(valid)} flags")

        def write(f):
            f["features"] = features
            f["valid"] = np.asarray(valid, dtype=bool)
        self._start()
        try:
            atomic_h5(self._shard_path(start), write)
        except OSError as err:
            raise ValueError(f"cannot write the feature cache shard {self._shard_path(start)}: "
                             f"{err}") from None

    def finish(self):
        """Merge the shards into the cache file (atomically) and remove the parts folder."""
        if self.complete:
            return self.path
        missing = self.pending()
        if missing:
            raise ValueError(f"feature cache {self.path}: {len(missing)} shard(s) still "
                             f"missing; run the same command again to compute them")
        shards = [self._shard_path(a) for a, _ in self.ranges()]
        self._check_shards()
        _remove_stale_tmp(self.path)
        with h5py.File(shards[0], "r") as f:
            dim = f["features"].shape[1]
        n = len(self.ids)
        provenance = dict(self.provenance, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

        def write(f):
            feats = f.create_dataset("features", (n, dim), dtype=np.float32,
                                     chunks=(max(1, min(n, 256)), dim))
            valid = np.zeros(n, dtype=bool)
            for (a, b), shard in zip(self.ranges(), shards):
                try:
                    with h5py.File(shard, "r") as s:
                        if s["features"].shape != (b - a, dim):
                            raise ValueError(f"shard {shard} holds {s['features'].shape}, "
                                             f"expected {(b - a, dim)}: delete it and run the "
                                             f"same command again")
                        feats[a:b] = s["features"][...]
                        valid[a:b] = s["valid"][...]
                except (OSError, KeyError) as err:
                    raise ValueError(f"feature cache shard {shard} is damaged ({err}): delete "
                                     f"it and run the same command again") from None
            f["valid"] = valid
            f["ids"] = np.array(self.ids, dtype=h5py.string_dtype())
            f["labels"] = self.labels
            f.attrs["format"] = FORMAT
            f.attrs["identity"] = json.dumps(self.identity)
            f.attrs["provenance"] = json.dumps(provenance)
            f.attrs["classes"] = json.dumps(self.classes)
        try:
            atomic_h5(self.path, write)
        except OSError as err:
            raise ValueError(f"cannot write the feature cache {self.path}: {err} (the shards "
                             f"in {self.parts} are kept: run the same command again)") from None
        shutil.rmtree(self.parts)
        self.complete = True
        return self.path


class FeatureSet:
    """A whole cache in memory: features (N, D) float32, valid (N,), ids, labels, classes,
    identity and provenance dicts, path."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __len__(self):
        return len(self.ids)

    def unreadable(self):
        """The ids of the images skipped as unreadable (valid False, zero features)."""
        return [self.ids[i] for i in np.flatnonzero(~np.asarray(self.valid, dtype=bool))]


def _unfinished_message(path):
    return (f"feature cache {path} is unfinished ({path}.parts holds the shards written so "
            f"far); run the same `minispp features` command again")


def read_cache(path, expect=None):
    """Load a finished cache. expect: identity fields that must match (others are free).
    An unfinished cache, a file that is not a feature cache, a damaged or inconsistent one,
    or a mismatch raise ValueError naming the file."""
    path = os.fspath(path)
    if path.endswith(".parts") and os.path.isdir(path):
        raise ValueError(_unfinished_message(path[:-len(".parts")]))
    if not os.path.exists(path):
        if os.path.isdir(path + ".parts"):
            raise ValueError(_unfinished_message(path))
        raise ValueError(f"feature cache {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a minispp feature cache (not a file)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(f"{path} is not a minispp feature cache (format "
                                 f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
            fs = FeatureSet(path=path, features=f["features"][...], valid=f["valid"][...],
                            ids=[s.decode() if isinstance(s, bytes) else s for s in f["ids"][...]],
                            labels=f["labels"][...], classes=json.loads(f.attrs["classes"]),
                            identity=json.loads(f.attrs["identity"]),
                            provenance=json.loads(f.attrs["provenance"]))
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"feature cache {path} cannot be read ({type(err).__name__}: {err}); "
                         f"it is not HDF5 or is damaged: extract it again") from None
    n, k = len(fs.ids), len(fs.classes)
    lab = fs.labels
    if (fs.features.ndim != 2 or len(fs.features) != n or fs.valid.shape != (n,)
            or len(lab) != n or lab.ndim not in (1, 2) or (lab.ndim == 2 and lab.shape[1] != k)
            or (lab.ndim == 1 and n and (lab.min() < 0 or lab.max() >= k))):
        raise ValueError(f"feature cache {path} is inconsistent (features {fs.features.shape}, "
                         f"valid {fs.valid.shape}, labels {lab.shape}, {n} ids, {k} classes): "
                         f"extract it again")
    if "classes" in fs.identity and fs.identity["classes"] != fs.classes:
        raise ValueError(f"feature cache {path} is inconsistent: its identity's class list "
                         f"differs from its stored classes; extract it again")
    if expect:
        check_identity(path, {k: fs.identity.get(k) for k in expect}, dict(expect))
    return fs


def _parts_info(path):
    parts = path + ".parts"
    ident_path = os.path.join(parts, "identity.json")
    have = len([s for s in os.listdir(parts) if s.startswith("shard-") and s.endswith(".h5")])
    try:
        with open(ident_path) as fh:
            stored = json.load(fh)
        ident = stored["identity"]
        n, size = int(ident["n"]), int(stored["shard_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{parts} is an unfinished feature cache whose {ident_path} is "
                         f"missing or damaged ({type(err).__name__}: {err}); {have} shard(s) "
                         f"in it: delete {parts} and run the `minispp features` command "
                         f"again") from None
    shards = -(-n // size) if size > 0 else 0
    lines = [f"{path}: UNFINISHED ({parts}), {have} of {shards} shards "
             f"({min(n, have * size)} of {n} images); run the same `minispp features` "
             f"command again to finish it"]
    lines += [f"  {k}: {v}" for k, v in ident.items() if k != "classes"]
    if isinstance(ident.get("classes"), list):
        names = ident["classes"]
        lines.append(f"  classes: {len(names)}: {', '.join(map(str, names[:8]))}"
                     f"{' ...' if len(names) > 8 else ''}")
    return "\n".join(lines)


def cache_info(path):
    """A few lines describing a cache, finished or not (for `minispp cache info`); path may
    name the cache or its unfinished ``.parts`` folder."""
    path = os.fspath(path).rstrip("/") or "/"
    if path.endswith(".parts") and os.path.isdir(path):
        path = path[:-len(".parts")]
    if not os.path.exists(path) and os.path.isdir(path + ".parts"):
        return _parts_info(path)
    fs = read_cache(path)
    bad = fs.unreadable()
    lines = [f"{path}: {FORMAT}, {len(fs)} images x {fs.features.shape[1]} features "
             f"(float32), {len(bad)} unreadable"
             + (f" (skipped, zero rows: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})"
                if bad else ""),
             f"  labels: {fs.labels.shape} {fs.labels.dtype}, {len(fs.classes)} classes: "
             f"{', '.join(fs.classes[:8])}{' ...' if len(fs.classes) > 8 else ''}"]
    lines += [f"  {k}: {v}" for k, v in fs.identity.items() if k != "classes"]
    lines += [f"  provenance.{k}: {v}" for k, v in fs.provenance.items()]
    return "\n".join(lines)
