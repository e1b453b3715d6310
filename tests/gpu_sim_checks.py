"""Parity checks of the numba.cuda kernels (minispp/kernels/gpu/) against their CPU twins
(minispp/kernels/cpu/), run under Numba's CUDA simulator on tiny shapes.

Not collected by a plain `pytest tests/` (the name does not match test_*.py): the simulator
flag must be set before numba is imported, so tests/test_gpu_kernels.py runs this file in its
own process with NUMBA_ENABLE_CUDASIM=1 and reports each check. To run it by hand:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/gpu_sim_checks.py

Max-type outputs, argmax and the max-pooling backward are compared exactly; the SPP backward
(atomic adds in no fixed order) exactly for integer-valued gradients and to 1e-12 (float64) /
1e-5 (float32) otherwise; LRN to float32 tolerance; im2col exactly, col2im exactly for
integer-valued columns and to tolerance otherwise.

Each comparison returns its mismatches as text, so the `test_detects_*` checks can show that
a deliberately broken kernel (an off-by-one window or bin, a wrong tie order, a lost image
index) is reported. MINISPP_GPU_SIM_BREAK=name[,name] swaps the broken variant in for the
real one in the parity checks, to see the whole run fail (tests/test_gpu_kernels.py does).
"""
import os

import numpy as np
import pytest
from numba import cuda
from numba.core import config

if not config.ENABLE_CUDASIM:
    raise RuntimeError("tests/gpu_sim_checks.py runs under Numba's CUDA simulator only: "
                       "set NUMBA_ENABLE_CUDASIM=1 before numba is imported "
                       "(tests/test_gpu_kernels.py does)")

from minispp.kernels.cpu import dropout as cpu_dropout  # noqa: E402
from minispp.kernels.cpu import im2col as cpu_im2col  # noqa: E402
from minispp.kernels.cpu import lrn as cpu_lrn  # noqa: E402
from minispp.kernels.cpu import maxpool as cpu_pool  # noqa: E402
from minispp.kernels.cpu import spp as cpu_spp  # noqa: E402
from minispp.kernels.gpu import dropout as gpu_dropout  # noqa: E402
from minispp.kernels.gpu import im2col as gpu_im2col  # noqa: E402
from minispp.kernels.gpu import lrn as gpu_lrn  # noqa: E402
from minispp.kernels.gpu import maxpool as gpu_pool  # noqa: E402
from minispp.kernels.gpu import spp as gpu_spp  # noqa: E402
from minispp.kernels.gpu._launch import launch  # noqa: E402
from minispp.kernels.philox import keep_threshold  # noqa: E402
from minispp.pyramid import Pyramid  # noqa: E402

DTYPES = (np.float32, np.float64)


# ---------------------------------------------------------------------------- comparisons

def diff(name, got, want, rtol=0.0, atol=0.0):
    """Mismatch descriptions (empty when they agree): exact when rtol = atol = 0."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return [f"{name}: shape {got.shape} != {want.shape}"]
    if rtol == 0 and atol == 0:
        bad = got != want
    else:
        bad = ~np.isclose(got, want, rtol=rtol, atol=atol)
    if not bad.any():
        return []
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    return [f"{name}: {int(bad.sum())} of {bad.size} differ, first at {at}: "
            f"gpu {got[at]!r} cpu {want[at]!r}"]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def values(rng, shape, dtype, kind):
    """'distinct': no ties; 'ties': small integers (many ties, as after a ReLU);
    'random': normal."""
    n = int(np.prod(shape))
    if kind == "distinct":
        v = (rng.permutation(n).reshape(shape) - n / 2) * 0.25
    elif kind == "ties":
        v = rng.integers(0, 3, shape)
    else:
        v = rng.standard_normal(shape)
    return np.ascontiguousarray(v, dtype=dtype)


# ---------------------------------------------------------------------------- max pooling

def pooled(size, k, s, p, ceil):
    """Output size of a pooling axis (Caffe's rule: the last window starts inside the map)."""
    span = size + 2 * p - k
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= size + p:
        o -= 1
    return o


# (N, C, H, W, kh, kw, sh, sw, ph, pw, ceil)
POOL_CASES = [
    (2, 2, 7, 7, 3, 3, 2, 2, 0, 0, False),
    (2, 2, 7, 7, 3, 3, 2, 2, 1, 1, True),
    (1, 3, 6, 5, 3, 2, 2, 1, 1, 0, True),
    (1, 2, 8, 6, 3, 3, 2, 2, 0, 0, True),      # ceil: the last window is clipped
    (1, 2, 5, 6, 2, 2, 2, 2, 0, 0, False),     # non-overlapping
]


def pool_forward_mismatches(forward, case, dtype, kind, seed=0, inference=False):
    """y and argmax exactly; with inference, also the run without argmax (which must leave
    the dummy argmax untouched)."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, ceil = case
    Ho, Wo = pooled(H, kh, sh, ph, ceil), pooled(W, kw, sw, pw, ceil)
    x = values(np.random.default_rng(seed), (N, C, H, W), dtype, kind)
    y0, a0 = np.empty((N, C, Ho, Wo), dtype), np.empty((N, C, Ho, Wo), np.int32)
    cpu_pool.maxpool_forward(x, kh, kw, sh, sw, ph, pw, y0, a0, True)
    y1, a1 = np.full_like(y0, np.nan), np.full_like(a0, -1)
    forward(x, kh, kw, sh, sw, ph, pw, y1, a1, True)
    out = diff("y", y1, y0) + diff("argmax", a1, a0)
    if not inference:
        return out
    y2 = np.full_like(y0, np.nan)
    dummy = np.full((1, 1, 1, 1), -7, np.int32)
    forward(x, kh, kw, sh, sw, ph, pw, y2, dummy, False)
    return out + diff("y (no argmax)", y2, y0) + diff("dummy argmax", dummy, [[[[-7]]]])


def pool_backward_mismatches(backward, case, dtype, seed=0):
    """GPU gather (maxpool_backward) against the CPU scatter, on tie-heavy argmax."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, ceil = case
    Ho, Wo = pooled(H, kh, sh, ph, ceil), pooled(W, kw, sw, pw, ceil)
    rng = np.random.default_rng(seed)
    x = values(rng, (N, C, H, W), dtype, "ties")
    y, a = np.empty((N, C, Ho, Wo), dtype), np.empty((N, C, Ho, Wo), np.int32)
    cpu_pool.maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, a, True)
    dy = values(rng, y.shape, dtype, "random")
    want = np.empty((N, C, H * W), dtype)
    cpu_pool.max_scatter_backward(dy.reshape(N, C, -1), a.reshape(N, C, -1), want)
    got = np.full((N, C, H, W), np.nan, dtype)
    backward(dy, a, kh, kw, sh, sw, ph, pw, got)
    return diff("dx", got.reshape(N, C, -1), want)


def scatter_mismatches(scatter, dtype, seed=0):
    """The general max_scatter_backward (any argmax, repeated targets)."""
    rng = np.random.default_rng(seed)
    N, C, K, HW = 2, 3, 11, 7
    dy = values(rng, (N, C, K), dtype, "random")
    a = rng.integers(0, HW, (N, C, K)).astype(np.int32)
    want, got = np.empty((N, C, HW), dtype), np.full((N, C, HW), np.nan, dtype)
    cpu_pool.max_scatter_backward(dy, a, want)
    scatter(dy, a, got)
    return diff("dx", got, want)


@cuda.jit
def _broken_maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, with_argmax):
    """The real kernel with the window one row short: an off-by-one window."""
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    t = cuda.grid(1)
    if t >= N * C * Ho * Wo:
        return
    ow = t % Wo
    oh = (t // Wo) % Ho
    c = (t // (Wo * Ho)) % C
    n = t // (Wo * Ho * C)
    h0 = max(oh * sh - ph, 0)
    h1 = max(min(oh * sh - ph + kh - 1, H), h0 + 1)
    w0 = max(ow * sw - pw, 0)
    w1 = min(ow * sw - pw + kw, W)
    best = x[n, c, h0, w0]
    at = h0 * W + w0
    for h in range(h0, h1):
        for w in range(w0, w1):
            if x[n, c, h, w] > best:
                best = x[n, c, h, w]
                at = h * W + w
    y[n, c, oh, ow] = best
    if with_argmax:
        argmax[n, c, oh, ow] = at


def broken_maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, with_argmax):
    N, C, Ho, Wo = y.shape
    launch(_broken_maxpool_forward, N * C * Ho * Wo, x, kh, kw, sh, sw, ph, pw, y, argmax,
           with_argmax)


def broken_maxpool_backward(dy, argmax, kh, kw, sh, sw, ph, pw, dx):
    """Routes to the wrong cell: the argmax of the next output along each row."""
    gpu_pool.maxpool_backward(dy, np.ascontiguousarray(np.roll(argmax, 1, axis=3)),
                              kh, kw, sh, sw, ph, pw, dx)


def broken_max_scatter(dy, argmax, dx):
    gpu_pool.max_scatter_backward(dy, np.ascontiguousarray(argmax[:, ::-1]), dx)


# ---------------------------------------------------------------------------- SPP

def spp_case(name):
    """(x, img, Pyramid) of a small SPP (N images, whole map each) or WindowSPP case."""
    if name.startswith("spp"):
        levels, form = {"spp-4-2-1": ((4, 2, 1), "appendix"),
                        "spp-6-3-2-1": ((6, 3, 2, 1), "appendix"),
                        "spp-fixed": ((3, 2, 1), "fixed")}[name]
        B, C, H, W = 2, 2, 7, 9
        windows = np.tile([[0, 0, W - 1, H - 1]], (B, 1))
        img = np.arange(B, dtype=np.int64)
    else:
        levels, form = {"window-6-3-2-1": ((6, 3, 2, 1), "appendix"),
                        "window-6-3-1": ((6, 3, 1), "appendix")}[name]
        B, C, H, W = 1, 2, 12, 13
        windows = np.array([[0, 0, 11, 11],      # 12 x 12: every level derived (n | 12)
                            [1, 0, 12, 11],
                            [3, 2, 8, 7],        # 6 x 6
                            [5, 5, 5, 5],        # one cell: every bin is that cell
                            [0, 4, 12, 6]])      # 13 x 3: bins overlap, n > height
        img = np.zeros(len(windows), np.int64)
    return (B, C, H, W), img, Pyramid(levels, windows, C, form)


SPP_CASES = ["spp-4-2-1", "spp-6-3-2-1", "spp-fixed", "window-6-3-2-1", "window-6-3-1"]


def spp_forward_mismatches(forward, name, dtype, kind, seed=0, inference=False):
    shape, img, p = spp_case(name)
    x = values(np.random.default_rng(seed), shape, dtype, kind)
    R = len(img)
    y0, a0 = np.empty((R, p.length), dtype), np.empty((R, p.length), np.int32)
    cpu_spp.spp_forward(x, img, *p.bins, p.levels, p.lofs, p.outofs, p.src, p.order, y0, a0,
                        True)
    y1, a1 = np.full_like(y0, np.nan), np.full_like(a0, -1)
    forward(x, img, *p.bins, p.levels, p.lofs, p.outofs, p.src, p.order, y1, a1, True)
    out = diff("y", y1, y0) + diff("argmax", a1, a0)
    if not inference:
        return out
    y2 = np.full_like(y0, np.nan)
    forward(x, img, *p.bins, p.levels, p.lofs, p.outofs, p.src, p.order, y2,
            np.zeros((1, 1), np.int32), False)
    return out + diff("y (no argmax)", y2, y0)


def spp_backward_mismatches(backward, name, dtype, grads, seed=0):
    shape, img, p = spp_case(name)
    rng = np.random.default_rng(seed)
    x = values(rng, shape, dtype, "ties")
    R = len(img)
    y, a = np.empty((R, p.length), dtype), np.empty((R, p.length), np.int32)
    cpu_spp.spp_forward(x, img, *p.bins, p.levels, p.lofs, p.outofs, p.src, p.order, y, a, True)
    if grads == "integer":
        dy = rng.integers(-4, 5, y.shape).astype(dtype)
    else:
        dy = values(rng, y.shape, dtype, "random")
    B, C, H, W = shape
    want = np.empty((B, C, H * W), dtype)
    cpu_spp.spp_backward(dy, a, img, p.levels, p.outofs, want)
    got = np.full_like(want, np.nan)
    backward(dy, a, img, p.levels, p.outofs, got)
    return diff("dx", got, want, **({} if grads == "integer" else tol(dtype)))


def broken_spp_forward(x, img, ys, ye, xs, xe, *rest):
    """An off-by-one bin: every bin taller than one row loses its last row."""
    gpu_spp.spp_forward(x, img, ys, ye - (ye - ys > 1), xs, xe, *rest)


def raster_spp_forward(x, img, ys, ye, xs, xe, levels, lofs, outofs, src, order, *rest):
    """Pools every level straight from the map (no derivation order): same maxima, but ties
    go to the first cell in raster order, not to the CPU's choice."""
    gpu_spp.spp_forward(x, img, ys, ye, xs, xe, levels, lofs, outofs,
                        np.full_like(src, -1), order, *rest)


def broken_spp_backward(dy, argmax, img, levels, outofs, dx):
    """Sends every window's gradient to image 0."""
    gpu_spp.spp_backward(dy, argmax, np.zeros_like(img), levels, outofs, dx)


# ---------------------------------------------------------------------------- LRN

# (N, C, H, W, size, alpha, beta, k)
LRN_CASES = [
    (1, 7, 3, 4, 5, 0.5, 0.75, 2.0),
    (1, 6, 2, 3, 4, 0.3, 0.5, 1.0),     # even size: asymmetric window
    (1, 5, 2, 2, 3, 1.0, 1.0, 1.5),
    (1, 5, 3, 2, 5, 0.7, 0.6, 1.0),     # exp/log branch
    (1, 3, 2, 2, 7, 0.4, 0.75, 1.0),    # window wider than the channels
]


def lrn_mismatches(forward, backward, case, dtype, seed=0):
    N, C, H, W, size, alpha, beta, k = case
    rng = np.random.default_rng(seed)
    x = values(rng, (N, C, H * W), dtype, "random")
    dy = values(rng, x.shape, dtype, "random")
    dt = np.dtype(dtype).type
    a, b, kk = dt(alpha), dt(beta), dt(k)
    want = [np.empty_like(x) for _ in range(3)]
    cpu_lrn.lrn_forward(x, size, a, b, kk, *want)
    got = [np.full_like(x, np.nan) for _ in range(3)]
    forward(x, size, a, b, kk, *got)
    out = []
    for name, g, w in zip(("y", "scale", "inv"), got, want):
        out += diff(name, g, w, **tol(dtype))
    scale, inv = want[1], want[2]          # the same saved state for both backwards
    dx0, r0 = np.empty_like(x), np.empty_like(x)
    cpu_lrn.lrn_backward(x, dy, scale, inv, size, a, b, dx0, r0)
    dx1, r1 = np.full_like(x, np.nan), np.full_like(x, np.nan)
    backward(x, dy, scale, inv, size, a, b, dx1, r1)
    return out + diff("ratio", r1, r0, **tol(dtype)) + diff("dx", dx1, dx0, **tol(dtype))


def broken_lrn_forward(x, size, alpha, beta, k, y, scale, inv):
    """The window one channel short on one side, scaled as if it were whole."""
    gpu_lrn.lrn_forward(x, size - 1, alpha * (size - 1) / size, beta, k, y, scale, inv)


def broken_lrn_backward(x, dy, scale, inv, size, alpha, beta, dx, ratio):
    """The backward window mirrored the wrong way (win(c) instead of its mirror): wrong for an
    even size, where the window is not symmetric."""
    x_rev = np.ascontiguousarray(x[:, ::-1])
    dy_rev, s_rev, i_rev = (np.ascontiguousarray(a[:, ::-1]) for a in (dy, scale, inv))
    gpu_lrn.lrn_backward(x_rev, dy_rev, s_rev, i_rev, size, alpha, beta, dx, ratio)
    dx[...] = dx[:, ::-1].copy()
    ratio[...] = ratio[:, ::-1].copy()


# ---------------------------------------------------------------------------- im2col

# (N, C, H, W, kh, kw, sh, sw, ph, pw)
CONV_CASES = [
    (2, 2, 5, 6, 3, 2, 2, 1, 1, 0),
    (1, 3, 4, 4, 3, 3, 1, 1, 1, 1),
    (1, 2, 5, 5, 1, 1, 2, 2, 0, 0),     # stride > kernel: cells never read get 0 in col2im
    (1, 1, 7, 6, 5, 5, 2, 3, 2, 2),
]


def conv_sizes(case):
    _, _, H, W, kh, kw, sh, sw, ph, pw = case
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def im2col_mismatches(fn, case, dtype, seed=0):
    N, C, H, W, kh, kw, sh, sw, ph, pw = case
    Ho, Wo = conv_sizes(case)
    x = values(np.random.default_rng(seed), (N, C, H, W), dtype, "random")
    want = np.empty((C * kh * kw, N * Ho * Wo), dtype)
    cpu_im2col.im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, want)
    got = np.full_like(want, np.nan)
    fn(x, kh, kw, sh, sw, ph, pw, Ho, Wo, got)
    return diff("col", got, want)


def col2im_mismatches(fn, case, dtype, kind, seed=0):
    N, C, H, W, kh, kw, sh, sw, ph, pw = case
    Ho, Wo = conv_sizes(case)
    rng = np.random.default_rng(seed)
    if kind == "integer":
        col = rng.integers(-9, 10, (C * kh * kw, N * Ho * Wo)).astype(dtype)
    else:
        col = values(rng, (C * kh * kw, N * Ho * Wo), dtype, "random")
    want = np.empty((N, C, H, W), dtype)
    cpu_im2col.col2im(col, kh, kw, sh, sw, ph, pw, Ho, Wo, want)
    got = np.full_like(want, np.nan)
    fn(col, kh, kw, sh, sw, ph, pw, Ho, Wo, got)
    return diff("dx", got, want, **({} if kind == "integer" else tol(dtype)))


def broken_im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, col):
    """The row padding off by one."""
    gpu_im2col.im2col(x, kh, kw, sh, sw, ph + 1, pw, Ho, Wo, col)


def broken_col2im(col, kh, kw, sh, sw, ph, pw, Ho, Wo, dx):
    """Drops the last kernel column's contributions."""
    c = col.reshape(-1, kh, kw, col.shape[1]).copy()
    c[:, :, -1] = 0
    gpu_im2col.col2im(c.reshape(col.shape), kh, kw, sh, sw, ph, pw, Ho, Wo, dx)


# ---------------------------------------------------------------------------- dropout masks

DROPOUT_CASES = [(3, 10, 0.5), (2, 7, 0.3), (4, 16, 0.0), (1, 5, 0.9)]   # rows, units, ratio


def dropout_mismatches(fn, case, dtype, seed=0):
    """The GPU mask against the CPU kernel's, exactly: the same Philox words, the same rows."""
    n, d, ratio = case
    keys = np.random.default_rng(seed).integers(0, 2 ** 64 - 1, n, dtype=np.uint64,
                                                endpoint=True)
    scale = np.dtype(dtype).type(1.0 / (1.0 - ratio))
    want = np.empty((n, d), dtype)
    cpu_dropout.dropout_mask(keys, keep_threshold(ratio), scale, want)
    got = np.full_like(want, np.nan)
    fn(keys, keep_threshold(ratio), scale, got)
    return diff("mask", got, want)


def broken_dropout_mask(keys, threshold, scale, out):
    """Rows drawn under each other's keys (the keys reversed)."""
    gpu_dropout.dropout_mask(keys[::-1].copy(), threshold, scale, out)


# ---------------------------------------------------------------------------- kernels used

GPU = {
    "maxpool_forward": gpu_pool.maxpool_forward,
    "maxpool_backward": gpu_pool.maxpool_backward,
    "max_scatter_backward": gpu_pool.max_scatter_backward,
    "spp_forward": gpu_spp.spp_forward,
    "spp_backward": gpu_spp.spp_backward,
    "lrn_forward": gpu_lrn.lrn_forward,
    "lrn_backward": gpu_lrn.lrn_backward,
    "im2col": gpu_im2col.im2col,
    "col2im": gpu_im2col.col2im,
    "dropout_mask": gpu_dropout.dropout_mask,
}
BROKEN = {
    "maxpool_forward": broken_maxpool_forward,
    "maxpool_backward": broken_maxpool_backward,
    "max_scatter_backward": broken_max_scatter,
    "spp_forward": broken_spp_forward,
    "spp_backward": broken_spp_backward,
    "lrn_forward": broken_lrn_forward,
    "lrn_backward": broken_lrn_backward,
    "im2col": broken_im2col,
    "col2im": broken_col2im,
    "dropout_mask": broken_dropout_mask,
}
for _name in filter(None, os.environ.get("MINISPP_GPU_SIM_BREAK", "").split(",")):
    GPU[_name.strip()] = BROKEN[_name.strip()]     # KeyError names an unknown kernel


def dtype_id(d):
    return np.dtype(d).name


# max-type kernels: ties in both dtypes, distinct values once (the dtype changes no index)
KINDS = [("distinct", np.float32), ("ties", np.float32), ("ties", np.float64)]


def kind_id(v):
    return v if isinstance(v, str) else dtype_id(v)


# ---------------------------------------------------------------------------- parity checks

@pytest.mark.parametrize("kind,dtype", KINDS, ids=kind_id)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c[:4])) + (
    "-k{}x{}-s{}x{}-p{}x{}".format(*c[4:10])) + ("-ceil" if c[10] else "-floor"))
def test_maxpool_forward(case, kind, dtype):
    assert not pool_forward_mismatches(GPU["maxpool_forward"], case, dtype, kind)


@pytest.mark.parametrize("case", POOL_CASES[1:3], ids=["ceil-pad", "rect-ceil"])
def test_maxpool_forward_inference(case):
    assert not pool_forward_mismatches(GPU["maxpool_forward"], case, np.float32, "ties",
                                       inference=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c[:4])) + (
    "-k{}x{}-s{}x{}-p{}x{}".format(*c[4:10])) + ("-ceil" if c[10] else "-floor"))
def test_maxpool_backward(case, dtype):
    assert not pool_backward_mismatches(GPU["maxpool_backward"], case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_max_scatter_backward(dtype):
    assert not scatter_mismatches(GPU["max_scatter_backward"], dtype)


@pytest.mark.parametrize("kind,dtype", KINDS, ids=kind_id)
@pytest.mark.parametrize("name", SPP_CASES)
def test_spp_forward(name, kind, dtype):
    assert not spp_forward_mismatches(GPU["spp_forward"], name, dtype, kind)


@pytest.mark.parametrize("name", ["spp-4-2-1", "window-6-3-1"])
def test_spp_forward_inference(name):
    assert not spp_forward_mismatches(GPU["spp_forward"], name, np.float32, "ties",
                                      inference=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", SPP_CASES)
def test_spp_backward(name, dtype):
    """Integer-valued gradients: every order of the atomic adds gives the CPU's sums."""
    assert not spp_backward_mismatches(GPU["spp_backward"], name, dtype, "integer")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", ["spp-6-3-2-1", "window-6-3-2-1"])
def test_spp_backward_random_grads(name, dtype):
    """Random gradients: equal to rounding, the atomics' order being free."""
    assert not spp_backward_mismatches(GPU["spp_backward"], name, dtype, "random")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", LRN_CASES, ids=lambda c: "C{}-size{}-beta{}".format(
    c[1], c[4], c[6]))
def test_lrn(case, dtype):
    assert not lrn_mismatches(GPU["lrn_forward"], GPU["lrn_backward"], case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:4])) + (
    "-k{}x{}-s{}x{}-p{}x{}".format(*c[4:10])))
def test_im2col(case, dtype):
    assert not im2col_mismatches(GPU["im2col"], case, dtype)


@pytest.mark.parametrize("kind", ["integer", "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:4])) + (
    "-k{}x{}-s{}x{}-p{}x{}".format(*c[4:10])))
def test_col2im(case, dtype, kind):
    assert not col2im_mismatches(GPU["col2im"], case, dtype, kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=lambda c: "{}x{}-ratio{}".format(*c))
def test_dropout_mask(case, dtype):
    assert not dropout_mismatches(GPU["dropout_mask"], case, dtype)


def test_spp_cases_exercise_derivation_chains():
    """The SPP cases derive levels from finer ones, through a chain of two in places, so the
    derivation order of the GPU kernel is what the parity checks compare."""
    depth = 0
    for name in SPP_CASES:
        _, _, p = spp_case(name)
        level, _ = gpu_spp.pyramid_table(p.levels, p.lofs, p.outofs, p.src)
        for li, s in enumerate(p.src):
            if s >= 0:
                d = 1 + (p.src[s] >= 0)
                depth = max(depth, d)
                assert level[li, 3] != li and p.src[level[li, 3]] < 0
    assert depth == 2


def test_pyramid_table_nested_order():
    """Level 1 derived from 2, derived from 4: the 16 leaf bins in the nested order of the
    CPU's derivation (2 x 2 blocks of 2 x 2), not in raster order."""
    levels = np.array([4, 2, 1])
    level, plan = gpu_spp.pyramid_table(levels, [0, 4, 6], [0, 16, 20], [-1, 0, 1])
    assert level[:, 3].tolist() == [0, 0, 0] and level[:, 5].tolist() == [1, 2, 4]
    p1 = plan[level[2, 4]:level[2, 4] + 16]
    assert [tuple(v) for v in p1[:5]] == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]
    assert sorted(map(tuple, p1)) == [(a, e) for a in range(4) for e in range(4)]


# ---------------------------------------------------------------------------- the checks fail

def test_detects_broken_maxpool_forward():
    assert pool_forward_mismatches(broken_maxpool_forward, POOL_CASES[0], np.float64,
                                   "distinct")


def test_detects_broken_maxpool_backward():
    assert pool_backward_mismatches(broken_maxpool_backward, POOL_CASES[1], np.float64)


def test_detects_broken_max_scatter_backward():
    assert scatter_mismatches(broken_max_scatter, np.float64)


def test_detects_off_by_one_spp_bin():
    found = spp_forward_mismatches(broken_spp_forward, "window-6-3-2-1", np.float64,
                                   "distinct")
    assert found and found[0].startswith("y:")


def test_detects_spp_tie_order():
    """Pooling derived levels in raster order gives the same maxima but other argmax on
    ties: the argmax comparison sees it (and not the value one)."""
    found = spp_forward_mismatches(raster_spp_forward, "window-6-3-2-1", np.float64, "ties")
    assert [m.split(":")[0] for m in found] == ["argmax"]


def test_detects_broken_spp_backward():
    assert spp_backward_mismatches(broken_spp_backward, "spp-4-2-1", np.float64, "integer")


def test_detects_broken_lrn():
    assert lrn_mismatches(broken_lrn_forward, gpu_lrn.lrn_backward, LRN_CASES[0], np.float32)
    found = lrn_mismatches(gpu_lrn.lrn_forward, broken_lrn_backward, LRN_CASES[1], np.float32)
    assert any(m.startswith("dx") for m in found)


def test_detects_broken_im2col():
    assert im2col_mismatches(broken_im2col, CONV_CASES[0], np.float32)
    assert col2im_mismatches(broken_col2im, CONV_CASES[0], np.float32, "integer")


def test_detects_broken_dropout_mask():
    assert dropout_mismatches(broken_dropout_mask, DROPOUT_CASES[0], np.float32)
