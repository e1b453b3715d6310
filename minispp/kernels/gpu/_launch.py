"""Launch plumbing shared by the numba.cuda kernels in this package.

Every kernel here is a 1-D grid of THREADS-thread blocks, one thread per output element
(or per input cell for the gathers); ``launch`` computes the grid, turns CuPy arrays into
Numba device views without a stream synchronization, and launches on CuPy's current stream.

Nothing here touches a device at import time: ``numba.cuda`` only looks for a driver when
a kernel is first launched, so these modules import on a machine without CUDA. Under Numba's
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported) the same kernels run
on NumPy arrays, one Python thread per CUDA thread; streams do not exist there and are
skipped.
"""
import os
import sys

from numba import cuda
from numba.core import config

if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
    # small layers (biases, a few windows) launch a handful of blocks by design: no warning
    # on every such launch unless the user asks for them (the variable too, since Numba
    # rereads its configuration from the environment)
    os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"
    config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

THREADS = 256           # threads per block, for every kernel in this package
SIM_THREADS = 32        # under the simulator, where each thread is a Python thread: fewer
                        # alive at once, and tiny test shapes still span several blocks

_streams = {}           # CuPy stream pointer -> Numba external stream


def simulated():
    """True when numba.cuda is the CUDA simulator."""
    return bool(config.ENABLE_CUDASIM)


def blocks_for(total, threads):
    """Blocks of `threads` threads that cover `total` threads (at least 1)."""
    return max(1, (int(total) + threads - 1) // threads)


def _cupy_arrays(args):
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return None
    return cupy if any(isinstance(a, cupy.ndarray) for a in args) else None


def current_stream(args):
    """The stream to launch on: CuPy's current stream when any argument is a CuPy array (so
    kernels and CuPy glue stay ordered without synchronizing the host), else the default
    stream (0)."""
    if simulated():
        return 0
    cupy = _cupy_arrays(args)
    if cupy is None:
        return 0
    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == 0:
        return 0            # CuPy's null stream is the legacy default stream, Numba's 0
    stream = _streams.get(ptr)
    if stream is None:
        stream = _streams[ptr] = cuda.external_stream(ptr)
    return stream


def device_view(a):
    """A Numba view of a device array that exposes __cuda_array_interface__ (CuPy), made
    without synchronizing the stream it names: the launch is on CuPy's current stream, which
    orders it after CuPy's earlier work. Other arguments (NumPy arrays, scalars, Numba device
    arrays) are returned as they are."""
    if simulated() or not hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host"):
        return a                        # host value, or already a Numba device array
    return cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)


def launch(kernel, total, *args):
    """Run `kernel` over `total` threads (1-D grid, THREADS per block) with `args`."""
    if total <= 0:
        return
    if simulated():
        kernel[blocks_for(total, SIM_THREADS), SIM_THREADS](*_simulator_args(args))
        return
    stream = current_stream(args)
    kernel[blocks_for(total, THREADS), THREADS, stream](*(device_view(a) for a in args))


def _simulator_args(args):
    """Under the simulator: the simulated device's arrays (minispp.backend) as plain NumPy
    views, and a host array among them refused, as a GPU body must pass device arrays only
    (on a device, Numba would copy a host array both ways at every launch)."""
    import numpy as np

    from minispp.backend import SimulatedDeviceArray
    if not any(isinstance(a, SimulatedDeviceArray) for a in args):
        return args                     # the kernel checks' own NumPy arrays
    out = []
    for a in args:
        if type(a) is np.ndarray and a.ndim > 0:
            raise TypeError(f"a host (NumPy) array of shape {a.shape} passed to a GPU kernel "
                            f"with device arrays; copy it to the device first")
        out.append(a.view(np.ndarray) if isinstance(a, SimulatedDeviceArray) else a)
    return out


def host_ints(a):
    """A small integer array (levels, offsets) as a host NumPy int64 array, wherever it is."""
    import numpy as np
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        a = a.get()                     # CuPy
    elif hasattr(a, "copy_to_host"):
        a = a.copy_to_host()            # Numba device array
    return np.asarray(a, dtype=np.int64)
