"""Dropout masks on the GPU (numba.cuda): the twin of minispp/kernels/cpu/dropout.py, the same
Philox4x32-10 words from the same 64-bit row keys, drawn on the device (one thread per group of
4 elements); only the keys (8 bytes a row) travel from the host."""
from numba import cuda

from minispp.kernels.philox import mask_group_for, philox4x32_10

from ._launch import launch

_mask_group = cuda.jit(device=True)(mask_group_for(cuda.jit(device=True)(philox4x32_10)))


@cuda.jit
def _dropout_mask(keys, threshold, scale, out):
    t = cuda.grid(1)
    if t < out.shape[0] * ((out.shape[1] + 3) // 4):
        _mask_group(keys, threshold, scale, out, t)


def dropout_mask(keys, threshold, scale, out):
    """keys: (N,) uint64 device array; out: (N, D) device array; threshold (uint64) and scale
    (out's dtype) as minispp.kernels.cpu.dropout.dropout_mask takes them."""
    n, d = out.shape
    launch(_dropout_mask, n * ((d + 3) // 4), keys, threshold, scale, out)
