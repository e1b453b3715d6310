"""The array module: NumPy on the CPU, CuPy on the GPU.

The module of an op is decided by its data (``get_array_module(x)``), never by a global flag
deep inside an op. ``MINISPP_DEVICE=cpu|gpu`` only chooses where new arrays (parameters,
batches) are created; it defaults to the CPU, and to the CPU as well when CuPy or a GPU is
missing, so importing minispp or running its tests never needs a GPU.
"""
import os

import numpy as np

try:  # CuPy is optional: `pip install -e .[gpu]`
    import cupy as _cupy
    try:
        _GPU = _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        _GPU = False
except ImportError:
    _cupy = None
    _GPU = False


def gpu_available():
    """True when CuPy imports and sees at least one GPU."""
    return _GPU


def device():
    """'gpu' when MINISPP_DEVICE=gpu and a GPU is usable, else 'cpu'."""
    wanted = os.environ.get("MINISPP_DEVICE", "cpu").lower()
    if wanted not in ("cpu", "gpu"):
        raise ValueError(f"MINISPP_DEVICE must be 'cpu' or 'gpu', got {wanted!r}")
    return "gpu" if wanted == "gpu" and _GPU else "cpu"


def default_module():
    """The module new arrays are created with: numpy, or cupy on the GPU device."""
    return _cupy if device() == "gpu" else np


def get_array_module(*arrays):
    """numpy or cupy, whichever the arrays belong to (numpy for non-arrays)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def to_numpy(a):
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)
