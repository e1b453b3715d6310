"""Max pooling with overlapping windows; argmax kept for the backward pass."""
import numba as nb


@nb.njit(parallel=True, cache=True, fastmath=False)
def maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, with_argmax):
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo); argmax: (N, C, Ho, Wo) int32, the flat index
    h * W + w of the winner inside its plane (first one on ties). Padding never wins: a
    window is clipped to the map, and the output sizes guarantee it keeps at least one cell.
    Parallel over the N C planes."""
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(Ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, H)
            for ow in range(Wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, W)
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


@nb.njit(parallel=True, cache=True)
def max_scatter_backward(dy, argmax, dx):
    """dx[n, c].flat[argmax[n, c, ...]] += dy[n, c, ...] for every plane; dx overwritten.

    dy, argmax: (N, C, K) with K outputs per plane; dx: (N, C, H W). The max pooling layer's
    backward (overlapping windows: a cell can receive several gradients). The SPP layers
    route their gradients with spp_backward (minispp/kernels/cpu/spp.py)."""
    N, C, K = dy.shape
    HW = dx.shape[2]
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        for i in range(HW):
            dx[n, c, i] = 0
        for k in range(K):
            dx[n, c, argmax[n, c, k]] += dy[n, c, k]
