"""minispp: SPP-net from scratch in NumPy (and CuPy), with hand-written backward passes.

The core: the array backend, the Params store, the Layer and Net contracts, SPP geometry,
kernels, gradient checking. Layers live in the top-level package ``layers``, networks in
``nets``, pipelines in ``train``.
"""
import os

# OpenBLAS worker threads spin for about 2^28 cycles after each GEMM, and on a small machine
# they steal the cores from the Numba kernel that follows (im2col after a conv GEMM ran 1.6x
# slower). A short timeout (2^4 cycles) lets them sleep at once. OpenBLAS reads this when it
# is loaded, so it takes effect when minispp is imported before NumPy (the command line and
# the benchmarks do); otherwise export OPENBLAS_THREAD_TIMEOUT=4 yourself.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .backend import get_array_module  # noqa: E402
from .layer import Layer  # noqa: E402
from .net import Net  # noqa: E402
from .params import Param, Params  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Params", "Param", "Layer", "Net", "get_array_module", "__version__"]
