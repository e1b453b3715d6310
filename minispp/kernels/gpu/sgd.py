"""The SGD update on the GPU (numba.cuda): the GPU twin of minispp/kernels/cpu/sgd.py, one
pass over each parameter, one thread per value:

    v = momentum v + lr (g + decay w);  w = w - v

Exact up to NVVM's contraction of a*b+c into fused multiply-adds (the CPU kernel is compiled
without contraction), so within float32 rounding of the CPU update, not bit for bit.
"""
from numba import cuda

from ._launch import launch


@cuda.jit
def _sgd_momentum(w, g, v, lr, momentum, decay):
    i = cuda.grid(1)
    if i >= w.shape[0]:
        return
    vi = momentum * v[i] + lr * (g[i] + decay * w[i])
    v[i] = vi
    w[i] -= vi


def sgd_momentum_update(w, g, v, lr, momentum, decay):
    """In place on flat device arrays w, g, v of one dtype; lr, momentum, decay in that dtype
    (the solver passes them so). Grid: one thread per value, ceil(size / 256) blocks of 256."""
    launch(_sgd_momentum, w.shape[0], w, g, v, lr, momentum, decay)
