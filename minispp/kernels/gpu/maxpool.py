"""Max pooling with overlapping windows on the GPU (numba.cuda): the GPU twin of
minispp/kernels/cpu/maxpool.py, with the same arguments and the same results bit for bit.

Forward: one thread per output (n, c, oh, ow). The window is clipped to the map (padding
never wins), scanned row by row with a strict ``>``, so the first maximum in raster order
wins a tie, as on the CPU; argmax is the flat index h W + w in the plane.

Backward, two forms:

* ``maxpool_backward``: a gather, one thread per input cell, which visits the outputs whose
  windows cover the cell in raster order and adds the gradients routed to it. No atomics;
  the sum is formed in the CPU scatter's order (0 + first + second ...), so dx equals the CPU
  result exactly in float32 and float64. The pooling layer's GPU body should use this one.
* ``max_scatter_backward``: the CPU kernel's general signature (any argmax, no window
  geometry), one thread per (n, c) plane doing the plane's scatter in order; exact as well,
  but with N C threads only. Kept for callers that have no pooling geometry.
"""
from numba import cuda

from ._launch import launch


@cuda.jit
def _maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, with_argmax):
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    t = cuda.grid(1)
    if t >= N * C * Ho * Wo:
        return
    ow = t % Wo
    t //= Wo
    oh = t % Ho
    t //= Ho
    c = t % C
    n = t // C
    # the window clipped to the map (no max/min: they are device functions in numba.cuda)
    h0 = oh * sh - ph
    h1 = h0 + kh
    if h0 < 0:
        h0 = 0
    if h1 > H:
        h1 = H
    w0 = ow * sw - pw
    w1 = w0 + kw
    if w0 < 0:
        w0 = 0
    if w1 > W:
        w1 = W
    best = x[n, c, h0, w0]
    at = h0 * W + w0
    for h in range(h0, h1):
        for w in range(w0, w1):
            v = x[n, c, h, w]
            if v > best:
                best = v
                at = h * W + w
    y[n, c, oh, ow] = best
    if with_argmax:
        argmax[n, c, oh, ow] = at


@cuda.jit
def _maxpool_gather(dy, argmax, kh, kw, sh, sw, ph, pw, zero, dx):
    N, C, H, W = dx.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    t = cuda.grid(1)
    if t >= N * C * H * W:
        return
    w = t % W
    t //= W
    h = t % H
    t //= H
    c = t % C
    n = t // C
    p = h * W + w
    # outputs whose window [o s - pad, o s - pad + k) holds the cell: o s > cell + pad - k
    # and o s <= cell + pad
    lo = h + ph - kh
    oh0 = 0 if lo < 0 else lo // sh + 1
    oh1 = (h + ph) // sh
    if oh1 > Ho - 1:
        oh1 = Ho - 1
    lo = w + pw - kw
    ow0 = 0 if lo < 0 else lo // sw + 1
    ow1 = (w + pw) // sw
    if ow1 > Wo - 1:
        ow1 = Wo - 1
    acc = zero
    for oh in range(oh0, oh1 + 1):
        for ow in range(ow0, ow1 + 1):
            if argmax[n, c, oh, ow] == p:
                acc += dy[n, c, oh, ow]
    dx[n, c, h, w] = acc


@cuda.jit
def _max_scatter_planes(dy, argmax, dx):
    N, C, K = dy.shape
    HW = dx.shape[2]
    t = cuda.grid(1)
    if t >= N * C:
        return
    n = t // C
    c = t % C
    for i in range(HW):
        dx[n, c, i] = 0
    for k in range(K):
        dx[n, c, argmax[n, c, k]] += dy[n, c, k]


def maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, with_argmax):
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo), written in place; argmax: (N, C, Ho, Wo) int32
    flat index h W + w of the winner in its plane (first in raster order on ties), written
    when with_argmax (else it may be any small int32 array). The caller sizes y (floor or ceil
    mode) so that every clipped window keeps at least one cell. Grid: one thread per output,
    ceil(N C Ho Wo / 256) blocks of 256."""
    N, C, Ho, Wo = y.shape
    launch(_maxpool_forward, N * C * Ho * Wo, x, int(kh), int(kw), int(sh), int(sw), int(ph),
           int(pw), y, argmax, bool(with_argmax))


def maxpool_backward(dy, argmax, kh, kw, sh, sw, ph, pw, dx):
    """dy, argmax: (N, C, Ho, Wo) from maxpool_forward with the same kh .. pw; dx: (N, C, H, W)
    overwritten with the routed gradients, equal bit for bit to the CPU max_scatter_backward.
    Grid: one thread per input cell, ceil(N C H W / 256) blocks of 256."""
    N, C, H, W = dx.shape
    launch(_maxpool_gather, N * C * H * W, dy, argmax, int(kh), int(kw), int(sh), int(sw),
           int(ph), int(pw), dx.dtype.type(0), dx)


def max_scatter_backward(dy, argmax, dx):
    """dx[n, c].flat[argmax[n, c, k]] += dy[n, c, k]; dy, argmax: (N, C, K), dx: (N, C, H W)
    overwritten: the CPU kernel's signature and order. Grid: one thread per plane,
    ceil(N C / 256) blocks of 256."""
    N, C, _ = dy.shape
    launch(_max_scatter_planes, N * C, dy, argmax, dx)
