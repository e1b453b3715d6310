"""SPP bin geometry and the window-to-feature-map projection (paper Sec. 2.3 and Appendix;
docs/design.md, "SPP bins" and "Window projection").

This module is the one place where bin boundaries are computed. Every SPP kernel receives the
boundaries it needs from here as arrays; no kernel recomputes a bin inline.

Conventions (stated once, used everywhere):

* A bin is a half-open range ``[start, stop)`` of 0-based feature-map cells.
* A window on a feature map is ``(x1, y1, x2, y2)`` in cells, 0-based and *inclusive* on both
  ends, so its width is ``x2 - x1 + 1``.
* A window on an image is ``(x1, y1, x2, y2)`` in pixels, 0-based, as the detector's boxes.

Two bin forms exist:

``"appendix"`` (paper Appendix, "Implementation of Pooling Bins"), for any map size a and
    level n: bin i (0-based) spans ``[floor(i a / n), ceil((i + 1) a / n))``. Floor on the
    left, ceiling on the right, so bins may overlap, cover every cell, and are never empty,
    even when n > a.

``"fixed"`` (paper Sec. 2.3, cuda-convnet style sliding-window pooling), for a fixed map size
    a: window ``win = ceil(a / n)``, stride ``str = floor(a / n)``, bin i spans
    ``[i str, i str + win)``. At a = 13 it equals the appendix form for n in {6, 3, 2, 1}; at
    a = 10, n = 6 it does not (win 2, stride 1: the six windows cover only cells 0..6, cells
    7..9 are never pooled). It needs a >= n (stride 0 would put every bin on cell 0).

Run ``python -m minispp.geometry 10 6`` to print both forms side by side.
"""
import sys

import numpy as np

FORMS = ("appendix", "fixed")


def _check_size_and_level(size, n):
    if int(size) != size or size < 1:
        raise ValueError(f"feature-map size must be a positive integer, got {size!r}")
    if int(n) != n or n < 1:
        raise ValueError(f"pyramid level must be a positive integer, got {n!r}")


def spp_bins(size, n, form="appendix"):
    """Bin boundaries of one pyramid level along one axis.

    size: the feature-map width (or height) a, in cells.
    n: bins per side at this level.
    form: "appendix" (floor/ceil, any size) or "fixed" (win = ceil(a/n), stride = floor(a/n)).
    Returns a list of n half-open ranges ``(start, stop)``.
    """
    _check_size_and_level(size, n)
    size, n = int(size), int(n)
    starts, stops = spp_bin_arrays(np.array([size]), n, form)
    return [(int(a), int(b)) for a, b in zip(starts[0], stops[0])]


def spp_bin_arrays(sizes, n, form="appendix"):
    """Vectorized spp_bins for many sizes at once (one per window).

    sizes: (R,) int, each >= 1.
    Returns (starts, stops), each (R, n) int64, half-open.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size and sizes.min() < 1:
        raise ValueError(f"feature-map size must be >= 1, got {int(sizes.min())}")
    i = np.arange(n, dtype=np.int64)[None, :]
    a = sizes[:, None]
    if form == "appendix":
        starts = (i * a) // n                      # floor(i a / n)
        stops = -((-(i + 1) * a) // n)             # ceil((i + 1) a / n)
    elif form == "fixed":
        if sizes.size and sizes.min() < n:
            raise ValueError(
                f"the 'fixed' bin form needs a feature map at least as large as the level: "
                f"map size {int(sizes.min())} < level {n} (stride floor(a/n) would be 0); "
                f"use form='appendix' for maps smaller than a pyramid level")
        win = -((-a) // n)                         # ceil(a / n)
        stride = a // n                            # floor(a / n)
        starts = i * stride
        stops = starts + win
    else:
        raise ValueError(f"unknown SPP bin form {form!r}; expected one of {FORMS}")
    return starts, stops


def spp_output_length(levels, channels):
    """Length of the SPP vector: channels x sum of n^2 over levels (12,800 for 256, (6,3,2,1))."""
    return int(channels) * sum(int(n) * int(n) for n in levels)


def spp_level_columns(levels, channels):
    """[(start, stop)] of each level's columns in the SPP output, levels in the order given,
    each level channel-major (C, n, n): (6, 3, 2, 1) with C = 256 gives (0, 9216), (9216,
    11520), (11520, 12544), (12544, 12800)."""
    out, start = [], 0
    for n in levels:
        stop = start + spp_output_length((n,), channels)
        out.append((start, stop))
        start = stop
    return out


def derivation_sources(levels, sizes, form="appendix"):
    """For each level, a finer level whose bins tile it exactly, or -1.

    A coarse bin whose range is exactly the union of a run of m/n consecutive finer bins has
    the max of those finer bins as its max, so the kernels pool the finest level from the map
    and derive coarser ones from it: fewer cells read, same result. In the appendix form this
    holds whenever n divides m (bin i of n = [floor(i a/n), ceil((i+1) a/n)) is the union of
    finer bins i k .. i k + k - 1, k = m/n, which touch or overlap). It is checked here
    numerically for every size given, so the fixed form is only derived where it is exact.

    levels: sequence of ints. sizes: (R,) ints, the map sizes (widths and heights) the bins are
    used for. Returns a list, one entry per level: the index in ``levels`` of the source level,
    or -1 to pool from the map. Sources are always finer (larger n) than the level they feed.
    """
    levels = [int(n) for n in levels]
    sizes = np.unique(np.asarray(sizes, dtype=np.int64))
    result = []
    for li, n in enumerate(levels):
        best = -1
        for mi, m in enumerate(levels):
            if m <= n or m % n:
                continue
            if best >= 0 and m >= levels[best]:
                continue                      # prefer the coarsest exact source: fewest reads
            k = m // n
            cs, ce = spp_bin_arrays(sizes, n, form)
            fs, fe = spp_bin_arrays(sizes, m, form)
            union_start = fs[:, ::k]
            union_stop = fe[:, k - 1::k]
            # contiguous: each finer bin starts no later than the previous one stops
            contiguous = np.all(fs[:, 1:] <= fe[:, :-1])
            if contiguous and np.array_equal(union_start, cs) and np.array_equal(union_stop, ce):
                best = mi
        result.append(best)
    return result


def pyramid_bins(windows, levels, form="appendix"):
    """The bins of every level of an SPP pyramid for every window, in absolute map cells.

    windows: (R, 4) int, inclusive cells (x1, y1, x2, y2), already validated.
    levels: pyramid levels, e.g. (6, 3, 2, 1).
    Returns (ys, ye, xs, xe), each (R, sum(levels)) int64: level l occupies columns
    offsets[l] .. offsets[l] + n_l - 1; rows [ys, ye) and columns [xs, xe) of the map.
    """
    w = np.asarray(windows, dtype=np.int64)
    widths = w[:, 2] - w[:, 0] + 1
    heights = w[:, 3] - w[:, 1] + 1
    parts = [[], [], [], []]
    for n in levels:
        ys, ye = spp_bin_arrays(heights, n, form)
        xs, xe = spp_bin_arrays(widths, n, form)
        for out, a, origin in zip(parts, (ys, ye, xs, xe), (1, 1, 0, 0)):
            out.append(a + w[:, origin:origin + 1])
    return tuple(np.ascontiguousarray(np.concatenate(p, axis=1)) for p in parts)


def receptive_field(layers):
    """Where the cells of a conv trunk look: layers is [(kernel, stride, pad), ...] in order.
    Returns (S, offset, size): cell x' of the last map is centred on image pixel
    offset + S x' (pixel centres at integer coordinates), and sees size x size pixels.

    Each layer moves the centre of cell 0 by ((k - 1) / 2 - p) times the stride so far. With
    the Appendix's padding floor(k / 2) on odd kernels that is 0, and offset = 0. ZF-5 pads
    conv1 (7x7) and conv2 (5x5) by 1 and its pools by 0: offset = 2 + 2 + 4 + 8 = 16 pixels."""
    S, offset, size = 1, 0.0, 1
    for k, stride, pad in layers:
        offset += ((k - 1) / 2.0 - pad) * S
        size += (k - 1) * S
        S *= stride
    return S, offset, size


def window_to_feature_map(boxes, stride, map_shape, offset=0.0):
    """Project image windows onto a conv feature map (paper Appendix, "Mapping a Window").

    With every layer padded floor(p/2) for filter size p, the response at cell x' has its
    receptive field centred at image pixel S x'. A window's corners go to the cells whose
    centres are nearest inside the window: left/top x' = floor(x / S) + 1, right/bottom
    x' = ceil(x / S) - 1. ``offset`` (pixels) is the centre of cell 0 when the padding differs
    from floor(p/2): the rule is applied to x - offset.

    A window narrower than about S projects to x2' < x1'; it is shrunk to the one cell nearest
    its centre, so no window ever pools an empty bin. Cells are clipped to the map (a small
    window in the last pixels past the last cell centre gets that last cell); a window more
    than a stride away from every cell centre raises ValueError.

    boxes: (R, 4) pixels (x1, y1, x2, y2). stride: S. map_shape: (H, W) of the feature map.
    Returns (R, 4) int64 cells (x1, y1, x2, y2), inclusive, inside the map.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (R, 4), got {boxes.shape}")
    if stride <= 0:
        raise ValueError(f"feature stride must be positive, got {stride}")
    check_windows_ordered(boxes, "image window")
    H, W = int(map_shape[0]), int(map_shape[1])
    b = (boxes - offset) / float(stride)
    limit = np.array([W - 1, H - 1], dtype=np.float64)
    # a window whose span does not come within one stride of the map's cell centres is
    # not on this image: say so rather than pool something arbitrary
    outside = (b[:, [0, 1]] > limit + 1) | (b[:, [2, 3]] < -1)
    if outside.any():
        r = int(np.nonzero(outside.any(axis=1))[0][0])
        raise ValueError(f"window {r} {tuple(float(v) for v in boxes[r])} (pixels) lies outside "
                         f"the feature map of {H}x{W} cells at stride {stride}")
    left = np.floor(b[:, [0, 1]]) + 1
    right = np.ceil(b[:, [2, 3]]) - 1
    centre = np.clip(np.rint((b[:, [0, 1]] + b[:, [2, 3]]) / 2), 0, limit)
    empty = right < left
    left = np.where(empty, centre, left)
    right = np.where(empty, centre, right)
    left = np.clip(left, 0, limit)
    right = np.clip(right, 0, limit)
    return np.concatenate([left, right], axis=1).astype(np.int64)


def check_windows_ordered(windows, what="window"):
    """Raise ValueError naming the first window with x2 < x1 or y2 < y1, or a non-finite one."""
    w = np.asarray(windows)
    bad = ~np.isfinite(w).all(axis=1) if w.dtype.kind == "f" else np.zeros(len(w), bool)
    if bad.any():
        r = int(np.nonzero(bad)[0][0])
        raise ValueError(f"{what} {r} {tuple(w[r].tolist())} is not finite")
    for col, (a, b) in enumerate(((0, 2), (1, 3))):
        bad = w[:, b] < w[:, a]
        if bad.any():
            r = int(np.nonzero(bad)[0][0])
            axis = "x" if col == 0 else "y"
            raise ValueError(f"{what} {r} {tuple(w[r].tolist())} has {axis}2 < {axis}1")


def check_cell_windows(windows, map_shape):
    """Validate (R, 4) inclusive cell windows against a (H, W) map; return them as int64."""
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] != 4:
        raise ValueError(f"windows must have shape (R, 4) as x1 y1 x2 y2, got {w.shape}")
    if w.shape[0] == 0:
        raise ValueError("no windows given: windows has shape (0, 4)")
    check_windows_ordered(w)
    if w.dtype.kind == "f":
        if not np.array_equal(w, np.round(w)):
            r = int(np.nonzero((w != np.round(w)).any(axis=1))[0][0])
            raise ValueError(f"window {r} {tuple(w[r].tolist())} is not in whole cells; "
                             f"project image boxes with window_to_feature_map first")
    w = w.astype(np.int64)
    H, W = int(map_shape[0]), int(map_shape[1])
    bad = (w[:, 0] < 0) | (w[:, 1] < 0) | (w[:, 2] > W - 1) | (w[:, 3] > H - 1)
    if bad.any():
        r = int(np.nonzero(bad)[0][0])
        raise ValueError(f"window {r} {tuple(w[r].tolist())} lies outside the feature map of "
                         f"{H}x{W} cells (valid x 0..{W - 1}, y 0..{H - 1})")
    return w


def bin_table(size, n):
    """Text table of both bin forms for one size and level: the truth table of docs/design.md, "SPP bins"."""
    lines = [f"map size a = {size}, level n = {n}",
             "  appendix: bin i = [floor(i a/n), ceil((i+1) a/n))",
             f"  fixed:    win = ceil(a/n) = {-(-size // n)}, stride = floor(a/n) = {size // n}",
             "",
             f"  {'bin':>3}  {'appendix':>12}  {'fixed':>12}"]
    app = spp_bins(size, n, "appendix")
    try:
        fix = spp_bins(size, n, "fixed")
    except ValueError as err:
        fix = None
        reason = str(err)
    for i in range(n):
        a = f"[{app[i][0]}, {app[i][1]})"
        f = f"[{fix[i][0]}, {fix[i][1]})" if fix else "-"
        mark = "" if fix is None or fix[i] == app[i] else "   differs"
        lines.append(f"  {i:>3}  {a:>12}  {f:>12}{mark}")

    def covered(bins):
        cells = sorted({c for a, b in bins for c in range(a, b)})
        return f"{len(cells)} of {size} cells pooled" + (
            "" if len(cells) == size else f" (never pooled: {sorted(set(range(size)) - set(cells))})")
    lines.append("")
    lines.append(f"  appendix: {covered(app)}")
    lines.append(f"  fixed:    {covered(fix) if fix else reason}")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print("usage: python -m minispp.geometry SIZE LEVEL\n"
              "Print the SPP bins of one level for a map of SIZE cells in both forms.\n"
              "examples:\n  python -m minispp.geometry 13 6   # the forms agree\n"
              "  python -m minispp.geometry 10 6   # they differ (docs/design.md, 'SPP bins')")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        try:
            size, level = int(argv[0]), int(argv[1])
        except ValueError:
            raise ValueError(f"SIZE and LEVEL must be positive integers, got {argv[0]!r} "
                             f"{argv[1]!r}") from None
        _check_size_and_level(size, level)
        if max(size, level) > MAX_TABLE:
            raise ValueError(f"SIZE and LEVEL are at most {MAX_TABLE} here (the table has a "
                             f"row per bin), got {size} {level}")
        print(bin_table(size, level))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


MAX_TABLE = 10_000     # the largest SIZE or LEVEL main prints a table for


if __name__ == "__main__":
    sys.exit(main())
