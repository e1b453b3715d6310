"""minispp: SPP-net from scratch in NumPy (and CuPy), with hand-written backward passes.

The core: the array backend, the Params store, the Layer and Net contracts, SPP geometry,
kernels, gradient checking. Layers live in the top-level package ``layers``, networks in
``nets``, pipelines in ``train``.
"""
from minispp.backend import get_array_module
from minispp.layer import Layer
from minispp.net import Net
from minispp.params import Param, Params

__version__ = "0.1.0"

__all__ = ["Params", "Param", "Layer", "Net", "get_array_module", "__version__"]
