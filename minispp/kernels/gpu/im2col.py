"""im2col / col2im on the GPU (numba.cuda) for the fallback convolution body (im2col +
cuBLAS GEMM) where cuDNN is missing. The GPU twin of minispp/kernels/cpu/im2col.py, same
arguments and layout: ``col`` is (C kh kw, N Ho Wo); row r = (c, i, j) holds, for every
output position (n, oh, ow), x[n, c, oh sh - ph + i, ow sw - pw + j] (0 in the padding).

im2col: one thread per element of col; neighbouring threads are neighbouring output columns
of one row, so the writes are coalesced. Exact (a copy).

col2im: its adjoint as a gather, one thread per input cell, adding the col entries that were
read from that cell in the order (i, j) the CPU kernel adds them. No atomics, no two threads
write the same cell; each sum starts from 0 in dx's dtype as on the CPU.
"""
from numba import cuda

from ._launch import launch


@cuda.jit
def _im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, col):
    N, C, H, W = x.shape
    P = Ho * Wo
    cols = N * P
    t = cuda.grid(1)
    if t >= C * kh * kw * cols:
        return
    r = t // cols
    o = t % cols
    n = o // P
    op = o % P
    oh = op // Wo
    ow = op % Wo
    j = r % kw
    i = (r // kw) % kh
    c = r // (kw * kh)
    ih = oh * sh - ph + i
    iw = ow * sw - pw + j
    if ih >= 0 and ih < H and iw >= 0 and iw < W:
        col[r, o] = x[n, c, ih, iw]
    else:
        col[r, o] = 0


@cuda.jit
def _col2im(col, kh, kw, sh, sw, ph, pw, Ho, Wo, zero, dx):
    N, C, H, W = dx.shape
    P = Ho * Wo
    t = cuda.grid(1)
    if t >= N * C * H * W:
        return
    w = t % W
    t //= W
    h = t % H
    t //= H
    c = t % C
    n = t // C
    acc = zero
    for i in range(kh):
        th = h + ph - i
        if th >= 0 and th % sh == 0 and th // sh < Ho:
            o = n * P + (th // sh) * Wo
            for j in range(kw):
                tw = w + pw - j
                if tw >= 0 and tw % sw == 0 and tw // sw < Wo:
                    acc += col[(c * kh + i) * kw + j, o + tw // sw]
    dx[n, c, h, w] = acc


def im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, col):
    """x: (N, C, H, W) -> col: (C kh kw, N Ho Wo), written in place. Grid: one thread per
    element of col, ceil(C kh kw N Ho Wo / 256) blocks of 256."""
    launch(_im2col, col.shape[0] * col.shape[1], x, int(kh), int(kw), int(sh), int(sw),
           int(ph), int(pw), int(Ho), int(Wo), col)


def col2im(col, kh, kw, sh, sw, ph, pw, Ho, Wo, dx):
    """Adjoint of im2col: dx (N, C, H, W), overwritten, = the sum of the col entries read from
    each cell. Grid: one thread per cell of dx, ceil(N C H W / 256) blocks of 256."""
    N, C, H, W = dx.shape
    launch(_col2im, N * C * H * W, col, int(kh), int(kw), int(sh), int(sw), int(ph), int(pw),
           int(Ho), int(Wo), dx.dtype.type(0), dx)
