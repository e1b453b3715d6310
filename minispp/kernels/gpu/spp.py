"""Spatial pyramid max pooling over windows on the GPU (numba.cuda): the body of both the SPP
layer (N images, one window each: the whole map) and WindowSPP (R windows of one image), in
ONE launch for all windows, levels, bins and channels. Paper Sec. 2.2-2.3 and Appendix;
docs/design.md, "SPP bins". The GPU twin of minispp/kernels/cpu/spp.py, with the same
arguments (bins from minispp.geometry through minispp.pyramid.Pyramid) and the same output
layout: y[r, outofs[l] + c n^2 + i n + j] is bin (i, j) of channel c at level l.

Forward: one thread per output element (r, q), q < C M. The CPU derives a coarse level from
a finer one (geometry.derivation_sources) by taking the first maximum, in raster order, of
the finer bins' maxima; the finer bins may themselves be derived. A thread cannot wait for
another thread's finer result inside one launch, so it re-reads the map instead, visiting
the cells of the "leaf" bins (the map-pooled level at the end of the derivation chain) in the
nested raster order the CPU's derivation implies, with a strict ``>``. The first maximum of
that sequence is the first maximum of the finer bins' first maxima, so values and argmax,
ties included, are those of the CPU (for inputs without NaN). The nested order depends on
the levels alone; the launcher builds it once per pyramid as a small table.

Backward: one thread per (r, q) adds dy[r, q] at its argmax with cuda.atomic.add (windows
and bins overlap, so cells receive several gradients). The order of the additions is not
fixed, so float results may differ from the CPU in the last bits; integer-valued gradients
(and any sums that are exact) match exactly.
"""
import numpy as np
from numba import cuda

from ._launch import host_ints, launch, simulated

# per-level columns of the level table
_N, _LOFS, _OUTOFS, _LEAF, _POFS, _K = range(6)

_tables = {}


def _leaf_order(levels, src, li, memo):
    """(offsets, leaf, K) of level li: its leaf level, the ratio K = levels[leaf] / levels[li],
    and the (da, de) offsets of the leaf bins inside the K x K block under one bin of li, in
    the order the CPU's derivation visits them."""
    if li in memo:
        return memo[li]
    s = int(src[li])
    if s < 0:
        out = ([(0, 0)], li, 1)
    else:
        n, m = int(levels[li]), int(levels[s])
        if m <= n or m % n:
            raise ValueError(f"SPP level {n} cannot be derived from level {m}")
        sub, leaf, ks = _leaf_order(levels, src, s, memo)
        k = m // n
        offsets = [(a * ks + da, e * ks + de) for a in range(k) for e in range(k)
                   for da, de in sub]
        out = (offsets, leaf, k * ks)
    memo[li] = out
    return out


def pyramid_table(levels, lofs, outofs, src):
    """The launch tables for one pyramid: level (L, 6) int64 rows (n, lofs, outofs, leaf,
    offset of its rows in plan, K) and plan (P, 2) int64 leaf-bin offsets. Host arrays."""
    levels, lofs, outofs, src = (host_ints(a) for a in (levels, lofs, outofs, src))
    L = len(levels)
    memo, rows, plan = {}, [], []
    for li in range(L):
        offsets, leaf, k = _leaf_order(levels, src, li, memo)
        rows.append((levels[li], lofs[li], outofs[li], leaf, len(plan), k))
        plan.extend(offsets)
    return np.array(rows, dtype=np.int64).reshape(L, 6), np.array(plan, dtype=np.int64)


def _cached(tag, make, *arrays):
    """make(*host arrays) -> tuple of device arrays (copied once), cached per value of the
    small inputs (and per device outside the simulator)."""
    key = (tag,) + tuple(tuple(host_ints(a).tolist()) for a in arrays)
    if not simulated():
        key += (cuda.get_current_device().id,)
    hit = _tables.get(key)
    if hit is None:
        hit = make(*(host_ints(a) for a in arrays))
        hit = tuple(cuda.to_device(a) for a in hit)
        if not simulated():
            cuda.synchronize()          # from pageable memory on the legacy stream: landed
                                        # before a kernel on any other stream reads it
        if len(_tables) >= 256:
            _tables.clear()             # a few pyramids per net; never grow without bound
        _tables[key] = hit
    return hit


def _backward_table(levels, outofs):
    return (np.stack([levels, outofs], axis=1).astype(np.int64),)


@cuda.jit
def _spp_forward(x, img, ys, ye, xs, xe, level, plan, y, argmax, with_argmax):
    C = x.shape[1]
    W = x.shape[3]
    R = y.shape[0]
    CM = y.shape[1]
    t = cuda.grid(1)
    if t >= R * CM:
        return
    r = t // CM
    q = t % CM
    li = 0                              # the level of q, then its channel and bin (i, j)
    for lv in range(level.shape[0]):
        if q >= level[lv, _OUTOFS] and q < level[lv, _OUTOFS] + C * level[lv, _N] * level[lv, _N]:
            li = lv
    n = level[li, _N]
    rem = q - level[li, _OUTOFS]
    c = rem // (n * n)
    rem = rem % (n * n)
    i = rem // n
    j = rem % n
    # the leaf bins under (i, j): rows i K + plan[s, 0], columns j K + plan[s, 1] of the leaf
    # level, whose bins start at column lo of the bin arrays
    leaf = level[li, _LEAF]
    p0 = level[li, _POFS]
    K = level[li, _K]
    lo = level[leaf, _LOFS]
    b = img[r]
    h = ys[r, lo + i * K + plan[p0, 0]]
    w = xs[r, lo + j * K + plan[p0, 1]]
    best = x[b, c, h, w]
    at = h * W + w
    for s in range(p0, p0 + K * K):
        bi = lo + i * K + plan[s, 0]
        bj = lo + j * K + plan[s, 1]
        w0 = xs[r, bj]
        w1 = xe[r, bj]
        for h in range(ys[r, bi], ye[r, bi]):
            for w in range(w0, w1):
                v = x[b, c, h, w]
                if v > best:
                    best = v
                    at = h * W + w
    y[r, q] = best
    if with_argmax:
        argmax[r, q] = at


@cuda.jit
def _zero3(a):
    B, C, HW = a.shape
    t = cuda.grid(1)
    if t < B * C * HW:
        a[t // (C * HW), (t // HW) % C, t % HW] = 0


@cuda.jit
def _spp_backward(dy, argmax, img, level, dx):
    C = dx.shape[1]
    R = dy.shape[0]
    CM = dy.shape[1]
    t = cuda.grid(1)
    if t >= R * CM:
        return
    r = t // CM
    q = t % CM
    c = 0
    for lv in range(level.shape[0]):
        nn = level[lv, 0] * level[lv, 0]
        if q >= level[lv, 1] and q < level[lv, 1] + C * nn:
            c = (q - level[lv, 1]) // nn
    cuda.atomic.add(dx, (img[r], c, argmax[r, q]), dy[r, q])


def spp_forward(x, img, ys, ye, xs, xe, levels, lofs, outofs, src, order, y, argmax,
                with_argmax):
    """The CPU spp_forward's arguments: x: (B, C, H, W); img: (R,) map of each window; ys, ye,
    xs, xe: (R, T) bins (device arrays, or NumPy under the simulator); levels, lofs, outofs,
    src, order: (L,) int64 (read on the host; `order` is not needed: no level waits for
    another). y: (R, C M) written; argmax: (R, C M) int32 flat h W + w, written when
    with_argmax. Grid: one thread per output element, ceil(R C M / 256) blocks of 256; one
    launch for all windows of all images."""
    level, plan = _cached("forward", pyramid_table, levels, lofs, outofs, src)
    R, CM = y.shape
    launch(_spp_forward, R * CM, x, img, ys, ye, xs, xe, level, plan, y, argmax,
           bool(with_argmax))


def spp_backward(dy, argmax, img, levels, outofs, dx):
    """dx[img[r], c].flat[argmax[r, q]] += dy[r, q] over every window, level and bin; dy,
    argmax: (R, C M); dx: (B, C, H W) overwritten. levels and outofs: (L,) int64, read on the
    host (copied to the device once per pyramid). Two launches: zero dx (one thread per cell), then
    one thread per element of dy with an atomic add, ceil(R C M / 256) blocks of 256."""
    if dy.dtype != dx.dtype:
        raise TypeError(f"spp_backward: dy is {dy.dtype} and dx {dx.dtype}; they must match "
                        f"(atomic adds of one type)")
    B, C, HW = dx.shape
    launch(_zero3, B * C * HW, dx)
    R, CM = dy.shape
    level, = _cached("backward", _backward_table, levels, outofs)
    launch(_spp_backward, R * CM, dy, argmax, img, level, dx)
