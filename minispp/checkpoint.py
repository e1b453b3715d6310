"""Checkpoints and weight files in HDF5 (and .npz for weights).

A checkpoint holds a model's parameters, their solver state (momentum, ...), the definition
that made them (name and arguments, so the model can be rebuilt), free-form metadata (epoch,
learning rate, random state: JSON), the minispp version and a SHA-256 checksum of the
parameters. It is written to a temporary file in the same folder, flushed to disk, and
renamed over the target: a run killed mid-write leaves the previous checkpoint intact.

Layout:
    /params/<name>            one dataset per parameter ("conv1.W")
    /state/<name>/<key>       solver state of that parameter
    /extras/<name>            other arrays of the run (the mean image, the colour PCA)
    attrs: format, minispp_version, definition, definition_args (JSON), checksum, meta (JSON)
"""
import hashlib
import json
import os

import h5py
import numpy as np

FORMAT = "minispp-checkpoint-1"


def checksum(arrays):
    """SHA-256 over names, dtypes, shapes and bytes of a {name: array} mapping, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


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


def save_checkpoint(path, params, definition, definition_args, meta=None, version="",
                    extras=None):
    """Write params (values and solver state), the definition, meta and extra arrays to
    path, atomically."""
    values = {p.name: p.value for p in params}

    def write(f):
        f.attrs["format"] = FORMAT
        f.attrs["minispp_version"] = version
        f.attrs["definition"] = definition
        f.attrs["definition_args"] = json.dumps(definition_args)
        f.attrs["meta"] = json.dumps(meta or {})
        f.attrs["checksum"] = checksum(values)
        g = f.create_group("params")
        s = f.create_group("state")
        for p in params:
            g.create_dataset(p.name, data=p.value)
            if p.state:
                sp = s.create_group(p.name)
                for key, arr in p.state.items():
                    sp.create_dataset(key, data=arr)
        e = f.create_group("extras")
        for name, arr in (extras or {}).items():
            e.create_dataset(name, data=arr)
    atomic_h5(path, write)


class Checkpoint:
    """What read_checkpoint returns: definition, definition_args, meta, version, params
    ({name: array}), state ({name: {key: array}}), extras ({name: array}), checksum, path."""

    def __init__(self, path, **fields):
        self.path = path
        self.__dict__.update(fields)


def read_checkpoint(path):
    """Read and verify a checkpoint. A missing, truncated or corrupt file, a file of another
    format, or a checksum mismatch raises ValueError naming the file."""
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
            ck = Checkpoint(path, definition=str(f.attrs["definition"]),
                            definition_args=json.loads(f.attrs["definition_args"]),
                            meta=json.loads(f.attrs["meta"]),
                            version=str(f.attrs["minispp_version"]),
                            checksum=str(f.attrs["checksum"]), params=params, state=state,
                            extras=extras)
    except ValueError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} cannot be read (truncated or corrupt?): {err}") from None
    actual = checksum(ck.params)
    if actual != ck.checksum:
        raise ValueError(f"checkpoint {path}: parameter checksum mismatch (stored "
                         f"{ck.checksum[:12]}..., computed {actual[:12]}...): the file is corrupt")
    return ck


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
