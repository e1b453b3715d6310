"""Dropout masks on the CPU: the twin of minispp/kernels/gpu/dropout.py, the same Philox4x32-10
words (minispp/kernels/philox.py), so both devices draw the same mask from the same keys."""
import numba as nb
import numpy as np

from minispp.kernels.philox import LOW32, SHIFT32, philox4x32_10

_philox = nb.njit(cache=True, inline="always")(philox4x32_10)
_ZERO = np.uint64(0)


@nb.njit(parallel=True, cache=True)
def dropout_mask(keys, threshold, scale, out):
    """Fill out (N, D) with the inverted-dropout mask: row n from its 64-bit key keys[n],
    its elements 4g..4g+3 from the 4 words of counter (g, 0, 0, 0); element j is scale where
    its word is >= threshold (kept), else 0."""
    n, d = out.shape
    groups = (d + 3) // 4
    for t in nb.prange(n * groups):
        r = t // groups
        g = t - r * groups
        key = keys[r]
        words = _philox(np.uint64(g), _ZERO, _ZERO, _ZERO, key & LOW32, key >> SHIFT32)
        for q in range(4):
            j = 4 * g + q
            if j < d:
                if words[q] >= threshold:
                    out[r, j] = scale
                else:
                    out[r, j] = 0
