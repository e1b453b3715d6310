"""Local response normalization across channels, fused forward and backward.

    scale[c] = k + (alpha / size) * sum_{j in win(c)} x[j]^2,  win(c) = [c - size//2, c + (size-1)//2]
    y[c]     = x[c] * scale[c]^-beta

    dx[c] = dy[c] * scale[c]^-beta
            - (2 alpha beta / size) * x[c] * sum_{j : c in win(j)} dy[j] * y[j] / scale[j]

{j : c in win(j)} = [c - (size-1)//2, c + size//2]: the mirror of win(c).

scale^-beta is the one transcendental: for beta = 0.75 (every net in the paper) it is
1 / (sqrt(s) * sqrt(sqrt(s))), for 0.5 and 1 a sqrt or a division, all of which vectorize;
other betas use exp(-beta log s). Everything is computed in the input's dtype.
"""
import math

import numba as nb
import numpy as np

# Fast-math flags that keep a result's bits the same on every CPU (no NaN/inf operands, signed
# zeros), without reassociation, FMA contraction, approximate reciprocals or functions: with
# fastmath=True LLVM chose, per CPU model, between a division and a reciprocal estimate, and
# the same training run gave other bits with Zen 3 than with Haswell code generation
# (NUMBA_CPU_NAME=haswell), for no gain in speed (the kernels are bound by memory bandwidth).
EXACT = {"nnan", "ninf", "nsz"}


@nb.njit(inline="always", fastmath=EXACT)
def _normalize_plane(xr, acc, k, a, beta, yr, scale_r, inv_r):
    """scale = k + a acc; inv = scale^-beta; y = x inv over one plane. The choice of formula
    is made once per plane, outside the pixel loops, so each loop vectorizes."""
    HW = xr.shape[0]
    for p in range(HW):
        scale_r[p] = k + a * acc[p]
    if beta == 0.75:
        for p in range(HW):
            r = math.sqrt(scale_r[p])
            inv_r[p] = 1.0 / (r * math.sqrt(r))
    elif beta == 0.5:
        for p in range(HW):
            inv_r[p] = 1.0 / math.sqrt(scale_r[p])
    elif beta == 1.0:
        for p in range(HW):
            inv_r[p] = 1.0 / scale_r[p]
    else:
        for p in range(HW):
            inv_r[p] = math.exp(-beta * math.log(scale_r[p]))
    for p in range(HW):
        yr[p] = xr[p] * inv_r[p]


@nb.njit(parallel=True, cache=True, fastmath=EXACT)
def lrn_forward(x, size, alpha, beta, k, y, scale, inv):
    """x, y, scale, inv: (N, C, HW); alpha, beta, k: scalars of x's dtype (so float32 maps
    compute in float32). Writes y, scale and inv = scale^-beta. Parallel over
    (n, c); each output plane sums its `size` squared neighbour planes (which stay in cache)
    into an accumulator, plane by plane, so the inner loops run over contiguous pixels and
    vectorize."""
    N, C, HW = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    a = alpha / x.dtype.type(size)
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        acc = np.zeros(HW, dtype=x.dtype)
        for j in range(max(c - lo, 0), min(c + hi, C - 1) + 1):
            for p in range(HW):
                v = x[n, j, p]
                acc[p] += v * v
        _normalize_plane(x[n, c], acc, k, a, beta, y[n, c], scale[n, c], inv[n, c])


@nb.njit(parallel=True, cache=True, fastmath=EXACT)
def lrn_backward(x, dy, scale, inv, size, alpha, beta, dx, ratio):
    """dx = dy * inv - (2 alpha beta / size) * x * window-sum of ratio, where
    ratio = dy * y / scale = dy * x * inv / scale. ratio: scratch (N, C, HW). Two parallel
    passes: ratio per (n, c), then dx per (n, c)."""
    N, C, HW = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    coef = 2 * alpha * beta / x.dtype.type(size)
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(HW):
            ratio[n, c, p] = dy[n, c, p] * x[n, c, p] * inv[n, c, p] / scale[n, c, p]
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        acc = np.zeros(HW, dtype=x.dtype)
        for j in range(max(c - hi, 0), min(c + lo, C - 1) + 1):
            for p in range(HW):
                acc[p] += ratio[n, j, p]
        for p in range(HW):
            dx[n, c, p] = dy[n, c, p] * inv[n, c, p] - coef * x[n, c, p] * acc[p]
