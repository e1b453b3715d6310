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
and split, the image ids) is compared on every resume and every read that states what it
expects: features from another model or made with other arguments are refused, naming the
fields that differ.

File layout:
    /features  (N, D) float32      /valid  (N,) bool: False where the image was unreadable
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

from .checkpoint import atomic_h5

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
        raise CacheMismatch(f"feature cache {path} was made by another model or with other "
                            f"arguments ({'; '.join(diff)}). {advice}")


class CacheWriter:
    """Writes (or resumes writing) the cache at path.

    identity: JSON-able dict of what the features are (compared on resume). ids: the image
    ids in order; labels: (N,) or (N, K) array; classes: class names; provenance: JSON-able
    dict stored as is (version, arguments, time). shard_size: images per shard.
    After construction, ``complete`` says whether the cache already exists whole, and
    ``pending()`` lists the (start, stop) image ranges still to compute.
    """

    def __init__(self, path, identity, ids, labels, classes, provenance=None, shard_size=64):
        self.path = os.fspath(path)
        self.parts = self.path + ".parts"
        self.identity = dict(identity, n=len(ids), ids_digest=ids_digest(list(ids)))
        self.ids, self.labels = list(ids), np.asarray(labels)
        self.classes, self.provenance = list(classes), dict(provenance or {})
        self.shard_size = int(shard_size)
        self.complete = False
        if os.path.exists(self.path):
            with h5py.File(self.path, "r") as f:
                check_identity(self.path, json.loads(f.attrs["identity"]), self.identity)
            self.complete = True
            return
        ident_path = os.path.join(self.parts, "identity.json")
        if os.path.exists(ident_path):
            with open(ident_path) as fh:
                stored = json.load(fh)
            check_identity(self.path, stored["identity"], self.identity)
            self.shard_size = stored["shard_size"]
        else:
            os.makedirs(self.parts, exist_ok=True)
            tmp = ident_path + f".tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump({"identity": self.identity, "shard_size": self.shard_size}, fh, indent=1)
            os.replace(tmp, ident_path)

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
        atomic_h5(self._shard_path(start), write)

    def finish(self):
        """Merge the shards into the cache file (atomically) and remove the parts folder."""
        if self.complete:
            return self.path
        missing = self.pending()
        if missing:
            raise RuntimeError(f"feature cache {self.path}: {len(missing)} shard(s) still missing")
        shards = [self._shard_path(a) for a, _ in self.ranges()]
        with h5py.File(shards[0], "r") as f:
            dim = f["features"].shape[1]
        n = len(self.ids)
        provenance = dict(self.provenance, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

        def write(f):
            feats = f.create_dataset("features", (n, dim), dtype=np.float32,
                                     chunks=(max(1, min(n, 256)), dim))
            valid = np.zeros(n, dtype=bool)
            for (a, b), shard in zip(self.ranges(), shards):
                with h5py.File(shard, "r") as s:
                    if s["features"].shape != (b - a, dim):
                        raise ValueError(f"shard {shard} holds {s['features'].shape}, expected "
                                         f"{(b - a, dim)}: remove {self.parts} and extract again")
                    feats[a:b] = s["features"][...]
                    valid[a:b] = s["valid"][...]
            f["valid"] = valid
            f["ids"] = np.array(self.ids, dtype=h5py.string_dtype())
            f["labels"] = self.labels
            f.attrs["format"] = FORMAT
            f.attrs["identity"] = json.dumps(self.identity)
            f.attrs["provenance"] = json.dumps(provenance)
            f.attrs["classes"] = json.dumps(self.classes)
        atomic_h5(self.path, write)
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


def read_cache(path, expect=None):
    """Load a finished cache. expect: identity fields that must match (others are free).
    An unfinished cache, a file that is not a feature cache, or a mismatch raise ValueError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.isdir(path + ".parts"):
            raise ValueError(f"feature cache {path} is unfinished ({path}.parts holds the shards "
                             f"written so far); run the same `minispp features` command again")
        raise ValueError(f"feature cache {path} does not exist")
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
    except OSError as err:
        raise ValueError(f"feature cache {path} cannot be read ({err}); it is not HDF5 or is "
                         f"damaged") from None
    if expect:
        check_identity(path, {k: fs.identity.get(k) for k in expect}, dict(expect))
    return fs


def cache_info(path):
    """A few lines describing a cache, finished or not (for `minispp cache info`)."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.isdir(path + ".parts"):
        with open(os.path.join(path + ".parts", "identity.json")) as fh:
            stored = json.load(fh)
        ident = stored["identity"]
        n, size = ident["n"], stored["shard_size"]
        shards = -(-n // size)
        have = len([s for s in os.listdir(path + ".parts") if s.startswith("shard-") and s.endswith(".h5")])
        lines = [f"{path}: UNFINISHED, {have} of {shards} shards ({min(n, have * size)} of {n} images)"]
        lines += [f"  {k}: {v}" for k, v in ident.items()]
        return "\n".join(lines)
    fs = read_cache(path)
    lines = [f"{path}: {FORMAT}, {len(fs)} images x {fs.features.shape[1]} features "
             f"(float32), {int((~fs.valid).sum())} unreadable",
             f"  labels: {fs.labels.shape} {fs.labels.dtype}, {len(fs.classes)} classes: "
             f"{', '.join(fs.classes[:8])}{' ...' if len(fs.classes) > 8 else ''}"]
    lines += [f"  {k}: {v}" for k, v in fs.identity.items()]
    lines += [f"  provenance.{k}: {v}" for k, v in fs.provenance.items()]
    return "\n".join(lines)
