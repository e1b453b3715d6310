"""Spatial pyramid max pooling over windows: the body of both the SPP layer (one window per
image: the whole map) and WindowSPP (many windows on one image's map). Paper Sec. 2.2-2.3,
Appendix.

Bins come from minispp.geometry.pyramid_bins; this file only takes maxima. Levels are
visited finest first; a level whose bins are exact unions of a finer level's bins
(geometry.derivation_sources) takes the max over those finer results instead of
re-reading the map.

Output layout for window r: level by level in the order given; within a level channel-major
(C, n, n), so y[r, outofs[l] + c n^2 + i n + j] is bin (row i, column j) of channel c.
"""
import numba as nb


@nb.njit(parallel=True, cache=True)
def spp_forward(x, img, ys, ye, xs, xe, levels, lofs, outofs, src, order, y, argmax,
                with_argmax):
    """x: (B, C, H, W); img: (R,) map index of each window; ys, ye, xs, xe: (R, T) bins;
    levels, lofs (column offset of each level in the bin arrays), outofs (offset of each level
    in y), src (finer source level or -1), order (levels, finest first): (L,) int64.
    y: (R, C M) output; argmax: (R, C M) int32 flat index h W + w in the plane, written when
    with_argmax. Parallel over windows."""
    B, C, H, W = x.shape
    R = y.shape[0]
    for r in nb.prange(R):
        b = img[r]
        for c in range(C):
            for li in order:
                n = levels[li]
                base = outofs[li] + c * n * n
                s = src[li]
                if s < 0:
                    for i in range(n):
                        h0 = ys[r, lofs[li] + i]
                        h1 = ye[r, lofs[li] + i]
                        for j in range(n):
                            w0 = xs[r, lofs[li] + j]
                            w1 = xe[r, lofs[li] + j]
                            best = x[b, c, h0, w0]
                            at = h0 * W + w0
                            for h in range(h0, h1):
                                for w in range(w0, w1):
                                    v = x[b, c, h, w]
                                    if v > best:
                                        best = v
                                        at = h * W + w
                            y[r, base + i * n + j] = best
                            if with_argmax:
                                argmax[r, base + i * n + j] = at
                else:
                    m = levels[s]
                    k = m // n
                    fbase = outofs[s] + c * m * m
                    for i in range(n):
                        for j in range(n):
                            f = fbase + (i * k) * m + j * k
                            best = y[r, f]
                            bf = f
                            for a in range(i * k, i * k + k):
                                for e in range(j * k, j * k + k):
                                    v = y[r, fbase + a * m + e]
                                    if v > best:
                                        best = v
                                        bf = fbase + a * m + e
                            y[r, base + i * n + j] = best
                            if with_argmax:
                                argmax[r, base + i * n + j] = argmax[r, bf]


@nb.njit(parallel=True, cache=True)
def spp_backward(dy, argmax, img, levels, outofs, dx):
    """dx[img[r], c].flat[argmax] += dy for every window r, level and bin; dx: (B, C, H W)
    overwritten. Parallel over channels: windows of one image share its map, channels do not.
    """
    B, C, HW = dx.shape
    R = dy.shape[0]
    L = levels.shape[0]
    for c in nb.prange(C):
        for b in range(B):
            for p in range(HW):
                dx[b, c, p] = 0
        for r in range(R):
            b = img[r]
            for li in range(L):
                nn = levels[li] * levels[li]
                base = outofs[li] + c * nn
                for q in range(base, base + nn):
                    dx[b, c, argmax[r, q]] += dy[r, q]
