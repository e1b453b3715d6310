"""Dropout masks on the GPU (numba.cuda): the twin of minispp/kernels/cpu/dropout.py, the same
Philox4x32-10 words from the same 64-bit row keys, drawn on the device (one thread per group of
4 elements); only the keys (8 bytes a row) travel from the host."""
import numpy as np
from numba import cuda

from minispp.kernels.philox import LOW32, SHIFT32, philox4x32_10

from ._launch import launch

_philox = cuda.jit(device=True)(philox4x32_10)
_ZERO = np.uint64(0)


@cuda.jit
def _dropout_mask(keys, threshold, scale, out):
    t = cuda.grid(1)
    n = out.shape[0]
    d = out.shape[1]
    groups = (d + 3) // 4
    if t >= n * groups:
        return
    r = t // groups
    g = t - r * groups
    key = keys[r]
    words = _philox(np.uint64(g), _ZERO, _ZERO, _ZERO, key & LOW32, key >> SHIFT32)
    for q in range(4):
        j = 4 * g + q
        if j < d:
            if words[q] >= threshold:
                out[r, j] = scale
            else:
                out[r, j] = 0


def dropout_mask(keys, threshold, scale, out):
    """keys: (N,) uint64 device array; out: (N, D) device array; threshold (uint64) and scale
    (out's dtype) as minispp.kernels.cpu.dropout.dropout_mask takes them."""
    n, d = out.shape
    launch(_dropout_mask, n * ((d + 3) // 4), keys, threshold, scale, out)
