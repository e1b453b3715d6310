"""Local response normalization across channels on the GPU (numba.cuda): the GPU twin of
minispp/kernels/cpu/lrn.py, same arguments, same formula (Caffe's convention: alpha is
divided by the window size; the ZF/AlexNet nets of the paper, Sec. 3.1):

    scale[c] = k + (alpha / size) * sum_{j in win(c)} x[j]^2,
               win(c) = [c - size//2, c + (size-1)//2]
    y[c]     = x[c] * scale[c]^-beta
    dx[c]    = dy[c] * scale[c]^-beta
               - (2 alpha beta / size) * x[c] * sum_{j : c in win(j)} dy[j] y[j] / scale[j],
               {j : c in win(j)} = [c - (size-1)//2, c + size//2]

One thread per (n, c, pixel); neighbouring threads are neighbouring pixels of one plane, so
every channel read is coalesced. Sums run over channels in increasing order from 0, and the
scalars have the CPU kernel's types (alpha / size in x's dtype, 2 alpha beta / size in
float64), so the two differ only where the GPU rounds differently: fused multiply-adds (NVVM
contracts a*b+c) and the exp/log used for betas other than 0.5, 0.75 and 1. Within float32
tolerance, not bit for bit.
"""
import math

import numpy as np
from numba import cuda

from ._launch import launch


@cuda.jit
def _lrn_forward(x, lo, hi, a, k, beta, y, scale, inv):
    N, C, HW = x.shape
    t = cuda.grid(1)
    if t >= N * C * HW:
        return
    p = t % HW
    t //= HW
    c = t % C
    n = t // C
    j0 = c - lo                 # clipped with ifs: max/min are device functions in numba.cuda
    if j0 < 0:
        j0 = 0
    j1 = c + hi
    if j1 > C - 1:
        j1 = C - 1
    v = x[n, j0, p]
    acc = v * v
    for j in range(j0 + 1, j1 + 1):
        v = x[n, j, p]
        acc += v * v
    s = k + a * acc
    scale[n, c, p] = s
    if beta == 0.75:
        r = math.sqrt(s)
        iv = 1.0 / (r * math.sqrt(r))
    elif beta == 0.5:
        iv = 1.0 / math.sqrt(s)
    elif beta == 1.0:
        iv = 1.0 / s
    else:
        iv = math.exp(-beta * math.log(s))
    inv[n, c, p] = iv
    y[n, c, p] = x[n, c, p] * inv[n, c, p]


@cuda.jit
def _lrn_ratio(x, dy, scale, inv, ratio):
    N, C, HW = x.shape
    t = cuda.grid(1)
    if t >= N * C * HW:
        return
    p = t % HW
    t //= HW
    c = t % C
    n = t // C
    ratio[n, c, p] = dy[n, c, p] * x[n, c, p] * inv[n, c, p] / scale[n, c, p]


@cuda.jit
def _lrn_dx(x, dy, inv, ratio, lo, hi, coef, zero, dx):
    N, C, HW = x.shape
    t = cuda.grid(1)
    if t >= N * C * HW:
        return
    p = t % HW
    t //= HW
    c = t % C
    n = t // C
    j0 = c - hi
    if j0 < 0:
        j0 = 0
    j1 = c + lo
    if j1 > C - 1:
        j1 = C - 1
    acc = zero
    for j in range(j0, j1 + 1):
        acc += ratio[n, j, p]
    dx[n, c, p] = dy[n, c, p] * inv[n, c, p] - coef * x[n, c, p] * acc


def lrn_forward(x, size, alpha, beta, k, y, scale, inv):
    """x, y, scale, inv: (N, C, HW); alpha, beta, k are taken in x's dtype (the layer passes
    them so). Writes y, scale and inv = scale^-beta. Grid: one thread per element,
    ceil(N C HW / 256) blocks of 256."""
    N, C, HW = x.shape
    dt = x.dtype.type
    size = int(size)
    alpha, beta, k = dt(alpha), dt(beta), dt(k)
    a = alpha / dt(size)
    launch(_lrn_forward, N * C * HW, x, size // 2, (size - 1) // 2, a, k, beta, y, scale, inv)


def lrn_backward(x, dy, scale, inv, size, alpha, beta, dx, ratio):
    """dx = dy inv - (2 alpha beta / size) x * window-sum of ratio, ratio = dy x inv / scale
    (scratch, (N, C, HW)). All arrays (N, C, HW). Two launches of one thread per element,
    ceil(N C HW / 256) blocks of 256: ratio, then dx."""
    N, C, HW = x.shape
    dt = x.dtype.type
    size = int(size)
    alpha, beta = dt(alpha), dt(beta)
    # the CPU kernel's 2 * alpha * beta / size: an int times a float32 is a float64 in Numba
    coef = np.float64(2) * np.float64(alpha) * np.float64(beta) / np.float64(dt(size))
    launch(_lrn_ratio, N * C * HW, x, dy, scale, inv, ratio)
    launch(_lrn_dx, N * C * HW, x, dy, inv, ratio, size // 2, (size - 1) // 2, coef, dt(0), dx)
