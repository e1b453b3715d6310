"""Checkpoints and weight files in HDF5 (and .npz for weights).

A checkpoint holds a model's parameters, their solver state (momentum, ...), the definition
that made them (name and arguments, so the model can be rebuilt), free-form metadata (epoch,
learning rate, random state: JSON), the minispp version, a SHA-256 checksum of the
parameters (the checkpoint's identity, which feature caches record) and a SHA-256 checksum
of every field that is loaded, so a damaged field is refused by name ("field
extras/pixel_std fails its checksum") instead of silently changing results. It is written
to a temporary file in the same folder, flushed to disk, and renamed over the target: a run
killed mid-write leaves the previous checkpoint intact.

Layout:
    /params/<name>            one dataset per parameter ("conv1.W")
    /state/<name>/<key>       solver state of that parameter
    /extras/<name>            other arrays of the run (the mean image, the colour PCA)
    attrs: format, minispp_version, definition, definition_args (JSON), checksum, meta (JSON),
           checksums (JSON {field: SHA-256}, fields "params/<name>", "state/<name>/<key>",
           "extras/<name>", "attrs/<attribute>"; absent in checkpoints written before it,
           whose parameters alone are verified, with a warning)
"""
import hashlib
import json
import os
import warnings

import h5py
import numpy as np

from minispp.backend import to_numpy

FORMAT = "minispp-checkpoint-1"


def checksum(arrays):
    """SHA-256 over names, dtypes, shapes and bytes of a {name: array} mapping, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def field_checksum(value):
    """SHA-256 of one checkpoint field: an array (dtype, shape and bytes) or a string
    attribute (its UTF-8 bytes)."""
    h = hashlib.sha256()
    if isinstance(value, (str, bytes)):
        h.update(b"str|")
        h.update(value.encode() if isinstance(value, str) else value)
        return h.hexdigest()
    a = np.asarray(value)
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


# the string attributes that read_checkpoint loads, each checksummed as "attrs/<name>"
CHECKED_ATTRS = ("definition", "definition_args", "meta", "minispp_version", "checksum")


def atomic_h5(path, write):
    """Call write(h5file) on a temporary file, fsync it, then rename it to path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:             # someone else's process: alive
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temporaries(folder, names):
    """Remove the temporary files that atomic_h5 left in folder for the targets `names`
    (".checkpoint.h5.tmp<pid>") when the process <pid> is gone (killed mid-save; a ZF-5
    checkpoint's is about 600 MB). A live process's file (a save in progress) is kept.
    Returns the removed paths."""
    removed = []
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return removed
    prefixes = {f".{name}.tmp" for name in names}
    for entry in os.scandir(folder):
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        pid = entry.name[len(prefix):] if prefix else ""
        if not (pid.isdigit() and pid.isascii()) or not entry.is_file(follow_symlinks=False):
            continue
        if not _process_alive(int(pid)):
            os.remove(entry.path)
            removed.append(entry.path)
    return sorted(removed)


def save_checkpoint(path, params, definition, definition_args, meta=None, version="",
                    extras=None):
    """Write params (values and solver state), the definition, meta and extra arrays to
    path, atomically. Always host arrays: GPU parameters are copied to the host first, so a
    checkpoint loads on either device."""
    values = {p.name: to_numpy(p.value) for p in params.values()}
    states = {p.name: {k: to_numpy(v) for k, v in p.state.items()} for p in params.values()}

    def write(f):
        attrs = {"format": FORMAT, "minispp_version": version, "definition": definition,
                 "definition_args": json.dumps(definition_args), "meta": json.dumps(meta or {}),
                 "checksum": checksum(values)}
        sums = {f"attrs/{name}": field_checksum(attrs[name]) for name in CHECKED_ATTRS}
        g = f.create_group("params")
        s = f.create_group("state")
        for p in params.values():
            g.create_dataset(p.name, data=values[p.name])
            sums[f"params/{p.name}"] = field_checksum(values[p.name])
            if states[p.name]:
                sp = s.create_group(p.name)
                for key, arr in states[p.name].items():
                    sp.create_dataset(key, data=arr)
                    sums[f"state/{p.name}/{key}"] = field_checksum(arr)
        e = f.create_group("extras")
        for name, arr in (extras or {}).items():
            arr = to_numpy(arr)
            e.create_dataset(name, data=arr)
            sums[f"extras/{name}"] = field_checksum(arr)
        for name, value in attrs.items():
            f.attrs[name] = value
        f.attrs["checksums"] = json.dumps(sums, sort_keys=True)
    atomic_h5(path, write)


class Checkpoint:
    """What read_checkpoint returns: definition, definition_args, meta, version, params
    ({name: array}), state ({name: {key: array}}), extras ({name: array}), checksum, path."""

    def __init__(self, path, **fields):
        self.path = path
        self.__dict__.update(fields)


def _attr_text(f, name):
    value = f.attrs[name]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _verify_fields(path, fields, stored):
    """Compare every loaded field with its stored checksum; a mismatch, a field without a
    checksum or a checksummed field that is missing raises ValueError naming the field."""
    for name in sorted(fields):
        if name not in stored:
            raise ValueError(f"checkpoint {path}: field {name} has no checksum (the file was "
                             f"altered or is corrupt)")
        actual = field_checksum(fields[name])
        if actual != stored[name]:
            raise ValueError(f"checkpoint {path}: field {name} fails its checksum (stored "
                             f"{str(stored[name])[:12]}..., computed {actual[:12]}...): the "
                             f"file is corrupt")
    missing = sorted(set(stored) - set(fields))
    if missing:
        raise ValueError(f"checkpoint {path}: field {missing[0]} is missing (the file is "
                         f"corrupt or truncated)")


def read_checkpoint(path):
    """Read and verify a checkpoint. A missing, truncated or corrupt file, a file of another
    format, or a field whose checksum does not match raises ValueError naming the file (and
    the field). A checkpoint written before per-field checksums has only its parameters
    verified, and says so once (a warning)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if fmt != FORMAT:
                raise ValueError(f"checkpoint {path}: format {fmt!r}, expected {FORMAT!r}")
            params = {name: ds[()] for name, ds in f["params"].items()}
            state = {name: {k: ds[()] for k, ds in g.items()} for name, g in f["state"].items()}
            extras = {name: ds[()] for name, ds in f["extras"].items()} if "extras" in f else {}
            attrs = {name: _attr_text(f, name) for name in CHECKED_ATTRS}
            stored = _attr_text(f, "checksums") if "checksums" in f.attrs else None
    except ValueError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} cannot be read (truncated or corrupt?): {err}") from None
    if stored is not None:
        try:
            stored = json.loads(stored)
        except ValueError:
            stored = None
        if not isinstance(stored, dict):
            raise ValueError(f"checkpoint {path}: its checksums attribute cannot be read (the "
                             f"file is corrupt)")
        fields = {f"attrs/{name}": value for name, value in attrs.items()}
        fields.update({f"params/{name}": a for name, a in params.items()})
        fields.update({f"state/{name}/{key}": a for name, keys in state.items()
                       for key, a in keys.items()})
        fields.update({f"extras/{name}": a for name, a in extras.items()})
        _verify_fields(path, fields, stored)
    else:                       # written before per-field checksums: the parameters only
        actual = checksum(params)
        if actual != attrs["checksum"]:
            raise ValueError(f"checkpoint {path}: parameter checksum mismatch (stored "
                             f"{attrs['checksum'][:12]}..., computed {actual[:12]}...): the "
                             f"file is corrupt")
        warnings.warn(f"checkpoint {path} was written before per-field checksums: its "
                      f"parameters are verified, its solver state, extras (mean image, pixel "
                      f"std, PCA), definition and meta are not; save it again to checksum them")
    try:
        definition_args = json.loads(attrs["definition_args"])
        meta = json.loads(attrs["meta"])
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: definition_args or meta is not valid JSON "
                         f"({err}): the file is corrupt") from None
    return Checkpoint(path, definition=attrs["definition"], definition_args=definition_args,
                      meta=meta, version=attrs["minispp_version"], checksum=attrs["checksum"],
                      params=params, state=state, extras=extras)


def read_weights(path):
    """{name: array} from a .npz file or an HDF5 file (datasets at any depth; "conv1/W" and
    "conv1.W" both name parameter conv1.W; a checkpoint's /params group is read as is)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"weight file {path} does not exist")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return {k.replace("/", "."): z[k] for k in z.files}
        out = {}
        with h5py.File(path, "r") as f:
            root = f["params"] if f.attrs.get("format") == FORMAT else f

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    out[name.replace("/", ".")] = obj[()]
            root.visititems(visit)
        return out
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"weight file {path} cannot be read: {err}") from None


def write_weights(path, arrays):
    """Write {name: array} as .npz (by extension) or HDF5 (one dataset per name), atomically."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        folder = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}.npz")
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return

    def write(f):
        for name, a in arrays.items():
            f.create_dataset(name, data=a)
    atomic_h5(path, write)
