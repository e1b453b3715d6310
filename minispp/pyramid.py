"""A pyramid's bookkeeping for the SPP kernels: levels, offsets and derivation order.

Turns a tuple of levels and the window sizes they pool into the small int64 arrays the
kernels take (minispp/kernels/cpu/spp.py). Bins themselves come from minispp.geometry.
"""
import numpy as np

from minispp.geometry import (
    derivation_sources,
    pyramid_bins,
    spp_level_columns,
    spp_output_length,
)


def check_levels(levels):
    try:
        levels = tuple(int(n) for n in levels)
    except TypeError:
        raise ValueError(f"SPP levels must be a sequence of ints, got {levels!r}") from None
    if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
        raise ValueError(f"SPP levels must be distinct positive ints, got {levels!r}")
    return levels


class Pyramid:
    """Kernel arguments for one set of windows.

    levels: e.g. (6, 3, 2, 1). windows: (R, 4) inclusive cells. channels: C. form: bin form.
    Attributes: levels, lofs, outofs, src, order ((L,) int64), bins = (ys, ye, xs, xe),
    length (C * sum n^2: one window's output).
    """

    def __init__(self, levels, windows, channels, form="appendix"):
        self.levels = np.array(check_levels(levels), dtype=np.int64)
        windows = np.asarray(windows, dtype=np.int64)
        sizes = np.concatenate([windows[:, 2] - windows[:, 0] + 1, windows[:, 3] - windows[:, 1] + 1])
        self.bins = pyramid_bins(windows, self.levels, form)
        self.lofs = np.concatenate([[0], np.cumsum(self.levels)[:-1]]).astype(np.int64)
        self.outofs = np.array([a for a, _ in spp_level_columns(self.levels, channels)], np.int64)
        self.src = np.array(derivation_sources(self.levels, sizes, form), dtype=np.int64)
        self.order = np.argsort(-self.levels, kind="stable").astype(np.int64)
        self.length = spp_output_length(self.levels, channels)
        self._device = None

    def device_bins(self, xp):
        """The bins (ys, ye, xs, xe) as arrays of the GPU module xp, copied once (the GPU
        kernels read them on the device; the small level arrays stay on the host)."""
        if self._device is None or self._device[0] is not xp:
            self._device = (xp, tuple(xp.asarray(b) for b in self.bins))
        return self._device[1]
