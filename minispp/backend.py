"""The array module: NumPy on the CPU, CuPy on the GPU (docs/design.md, "Devices").

The module of an op is decided by its data (``get_array_module(x)``), never by a global flag
deep inside an op: a layer runs its GPU body when it is handed a device array. Where arrays
are *created* (parameters, batches) is a choice made once, by the caller: ``model.to("gpu")``,
``nets.build(..., device="gpu")``, ``--device gpu`` on the command line (``gpu_module()``
raises ``GPUUnavailable``, one line, where CuPy or a GPU is missing). ``MINISPP_DEVICE=cpu|gpu``
is the default of that choice for code that asks ``default_module()``; in library code it
falls back to the CPU with a warning, so importing minispp or running its tests never needs
a GPU, and a command refuses it in one line as it refuses ``--device gpu``.

The simulated device. On a machine without a GPU, the GPU bodies are still run: Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1) executes the numba.cuda kernels on NumPy arrays, and
``simulate_gpu()`` (called only by the simulator tests, in their own process) makes
``gpu_module()`` return ``SIMULATED``: a stand-in for CuPy whose arrays are
``SimulatedDeviceArray``, a marked NumPy array. ``get_array_module`` answers ``SIMULATED`` for
them, so a layer picks its GPU body exactly as it does for a CuPy array, and the GPU bodies,
written against ``xp``, run unchanged. Like CuPy, the stand-in refuses a host (plain NumPy)
array mixed into a device op or handed to a kernel (TypeError), so a GPU body that forgot a
transfer fails under the simulator as it would on a device. Until ``simulate_gpu()`` is
called, none of this is consulted: the CPU path pays one ``is None`` test per layer call.
"""
import os

import numpy as np

try:  # CuPy is optional: `pip install -e .[gpu]`
    import cupy as _cupy
    try:
        _GPU = _cupy.cuda.runtime.getDeviceCount() > 0
        _GPU_PROBLEM = None if _GPU else "CuPy sees no CUDA GPU on this machine"
    except Exception as err:  # no driver, no device
        _GPU = False
        _GPU_PROBLEM = (f"CuPy finds no usable GPU ({type(err).__name__}: "
                        f"{' '.join(str(err).split())})")
except ImportError:
    _cupy = None
    _GPU = False
    _GPU_PROBLEM = "CuPy is not installed (pip install -e '.[gpu]' on a CUDA 13 machine)"

DEVICES = ("cpu", "gpu")


class GPUUnavailable(ValueError):
    """The GPU device was asked for where CuPy or a GPU is missing (a bad choice of device for
    this machine: a ValueError, which the command line turns into its one-line error)."""


def gpu_available():
    """True when CuPy imports and sees at least one GPU."""
    return _GPU


_CHOSEN = None          # use_device's choice


def use_device(name):
    """Place the models this process builds or loads without naming a device on `name`
    ('cpu' or 'gpu'; GPUUnavailable where CuPy or a GPU is missing): the command line's
    --device. Ops still follow their data."""
    global _CHOSEN
    _CHOSEN = check_device(name)


def device():
    """The device models are placed on by default: use_device's choice; else 'gpu' when
    MINISPP_DEVICE=gpu and a GPU is usable; else 'cpu'."""
    if _CHOSEN is not None:
        return _CHOSEN
    wanted = os.environ.get("MINISPP_DEVICE", "cpu").lower()
    if wanted not in DEVICES:
        raise ValueError(f"MINISPP_DEVICE must be 'cpu' or 'gpu', got {wanted!r}")
    if wanted == "gpu" and not _GPU and not _WARNED:
        _warn_fallback()
    return "gpu" if wanted == "gpu" and _GPU else "cpu"


_WARNED = False


def _warn_fallback():
    """Say once that MINISPP_DEVICE=gpu fell back to the CPU (the commands refuse it)."""
    global _WARNED
    _WARNED = True
    import warnings
    warnings.warn(f"MINISPP_DEVICE=gpu, but {_GPU_PROBLEM}: new arrays go to the CPU",
                  RuntimeWarning, stacklevel=3)


def default_module():
    """The module new arrays are created with: numpy, or the GPU module on the GPU device."""
    return gpu_module() if device() == "gpu" else np


def check_device(name):
    """name if it is 'cpu' or 'gpu' (ValueError otherwise); for 'gpu', GPUUnavailable unless
    CuPy sees a GPU (or the simulated device is on)."""
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {name!r}")
    if name == "gpu":
        gpu_module()
    return name


def gpu_module():
    """The simulated device's module where ``simulate_gpu()`` was called (even on a GPU
    machine: the simulator runs the kernels on NumPy arrays only); else cupy on a GPU
    machine; else GPUUnavailable with the reason in one line."""
    if _SIM is not None:
        return _SIM
    if _GPU:
        return _cupy
    raise GPUUnavailable(f"--device gpu: {_GPU_PROBLEM}")


def module_of(device_name):
    """numpy for 'cpu', the GPU module for 'gpu'."""
    return np if check_device(device_name) == "cpu" else gpu_module()


def get_array_module(*arrays):
    """numpy or cupy, whichever the arrays belong to (numpy for non-arrays); the simulated
    device's module for its arrays once ``simulate_gpu()`` is on."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    if _SIM is not None:
        for a in arrays:
            if isinstance(a, SimulatedDeviceArray):
                return _SIM
    return np


def device_of(a):
    """'gpu' for a CuPy (or simulated device) array, else 'cpu'."""
    return "cpu" if get_array_module(a) is np else "gpu"


def to_numpy(a):
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    if isinstance(a, SimulatedDeviceArray):
        return np.array(a.view(np.ndarray))
    return np.asarray(a)


def to_device(a, device_name):
    """a on the device: a NumPy array for 'cpu', a CuPy (or simulated) one for 'gpu'; a
    copy only when it is elsewhere."""
    if check_device(device_name) == "cpu":
        return to_numpy(a)
    xp = gpu_module()
    return a if get_array_module(a) is xp else xp.asarray(a)


# ---------------------------------------------------------------------------- the simulated device

class SimulatedDeviceArray(np.ndarray):
    """A NumPy array that stands for a CuPy array under Numba's CUDA simulator.

    Array methods and operators work as on NumPy (the results stay marked); a ufunc that mixes
    in a plain NumPy array of rank >= 1 raises TypeError, as CuPy does; ``get()`` copies to
    the host, as CuPy's does."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(ufunc.__name__, inputs + (out or ()))
        args = tuple(_plain(a) for a in inputs)
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _mark(result)

    def get(self):
        """A host (NumPy) copy."""
        return np.array(self.view(np.ndarray))


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, SimulatedDeviceArray) else a


def _mark(r):
    if isinstance(r, tuple):
        return tuple(_mark(v) for v in r)
    if type(r) is np.ndarray:
        return r.view(SimulatedDeviceArray)
    return r


def _refuse_host(what, values):
    for v in values:
        if type(v) is np.ndarray and v.ndim > 0:
            raise TypeError(f"{what}: a host (NumPy) array of shape {v.shape} mixed with device "
                            f"arrays; copy it to the device first (xp.asarray)")


class _SimulatedModule:
    """The CuPy stand-in: numpy's functions on device arrays, their array results marked.
    Host arrays are accepted only where CuPy accepts them: asarray and array (a copy to the
    device)."""

    __name__ = "minispp.backend.SIMULATED"
    ndarray = SimulatedDeviceArray
    TRANSFERS = ("asarray", "array")

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f                            # constants, dtypes (xp.float32)
        if name in self.TRANSFERS:
            def wrapped(a, *args, **kwargs):      # from the host: a copy, as CuPy makes one
                on_device = isinstance(a, SimulatedDeviceArray)
                make = np.asarray if on_device and name == "asarray" else np.array
                return _mark(make(_plain(a), *args, **kwargs))
        else:
            def wrapped(*args, **kwargs):
                _refuse_host(f"xp.{name}", args + tuple(kwargs.values()))
                return _mark(f(*(_plain(a) for a in args),
                               **{k: _plain(v) for k, v in kwargs.items()}))
        wrapped.__name__ = name
        setattr(self, name, wrapped)            # looked up once
        return wrapped

    @staticmethod
    def asnumpy(a):
        return to_numpy(a)

    def __repr__(self):
        return "<the simulated GPU array module (NumPy under Numba's CUDA simulator)>"


SIMULATED = _SimulatedModule()
_SIM = None


def simulate_gpu(on=True):
    """Make the GPU device the simulated one (True) or none (False). Only under Numba's CUDA
    simulator, whose flag must be set before numba is first imported: the simulator tests
    (tests/gpu_sim_bodies.py) call this in their own process."""
    global _SIM
    if on:
        from numba.core import config
        if not config.ENABLE_CUDASIM:
            raise RuntimeError("simulate_gpu() needs Numba's CUDA simulator: set "
                               "NUMBA_ENABLE_CUDASIM=1 before numba is imported")
    _SIM = SIMULATED if on else None


def simulated_gpu():
    """True while the GPU device is the simulated one."""
    return _SIM is not None
