"""Local response normalization across channels, fused forward and backward.

    scale[c] = k + (alpha / size) * sum_{j in win(c)} x[j]^2,  win(c) = [c - size//2, c + (size-1)//2]
    y[c]     = x[c] * scale[c]^-beta

    dx[c] = dy[c] * scale[c]^-beta
            - (2 alpha beta / size) * x[c] * sum_{j : c in win(j)} dy[j] * y[j] / scale[j]

{j : c in win(j)} = [c - (size-1)//2, c + size//2]: the mirror of win(c).

scale^-beta is the one transcendental: for beta = 0.75 (every net in the paper) it is
1 / (sqrt(s) * sqrt(sqrt(s))), for 0.5 and 1 a sqrt or a division, all of which vectorize;
other betas use exp(-beta log s).
"""
import math

import numba as nb


@nb.njit(inline="always", fastmath=True)
def _neg_pow(s, beta):
    if beta == 0.75:
        r = math.sqrt(s)
        return 1.0 / (r * math.sqrt(r))
    if beta == 0.5:
        return 1.0 / math.sqrt(s)
    if beta == 1.0:
        return 1.0 / s
    return math.exp(-beta * math.log(s))


@nb.njit(parallel=True, cache=True, fastmath=True)
def lrn_forward(x, size, alpha, beta, k, y, scale, inv):
    """x, y, scale, inv: (N, C, HW). Writes y, scale and inv = scale^-beta. Parallel over
    (n, c); each output sums its own `size` squared planes, which stay in cache."""
    N, C, HW = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    a = alpha / size
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        j0 = max(c - lo, 0)
        j1 = min(c + hi, C - 1)
        for p in range(HW):
            s = 0.0
            for j in range(j0, j1 + 1):
                v = x[n, j, p]
                s += v * v
            sc = k + a * s
            iv = _neg_pow(sc, beta)
            scale[n, c, p] = sc
            inv[n, c, p] = iv
            y[n, c, p] = x[n, c, p] * iv


@nb.njit(parallel=True, cache=True, fastmath=True)
def lrn_backward(x, dy, scale, inv, size, alpha, beta, dx, ratio):
    """dx = dy * inv - (2 alpha beta / size) * x * window-sum of ratio, where
    ratio = dy * y / scale = dy * x * inv / scale. ratio: scratch (N, C, HW). Two parallel
    passes: ratio per (n, c), then dx per (n, c)."""
    N, C, HW = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    coef = 2.0 * alpha * beta / size
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(HW):
            ratio[n, c, p] = dy[n, c, p] * x[n, c, p] * inv[n, c, p] / scale[n, c, p]
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        j0 = max(c - hi, 0)
        j1 = min(c + lo, C - 1)
        for p in range(HW):
            s = 0.0
            for j in range(j0, j1 + 1):
                s += ratio[n, j, p]
            dx[n, c, p] = dy[n, c, p] * inv[n, c, p] - coef * x[n, c, p] * s
