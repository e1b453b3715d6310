"""Dropout masks on the CPU: the twin of minispp/kernels/gpu/dropout.py, the same Philox4x32-10
words (minispp/kernels/philox.py), so both devices draw the same mask from the same keys.

Numba's cache (cache=True) keys a compiled kernel on its own file only: after an edit of
minispp/kernels/philox.py, touch this file so the CPU kernel is compiled again
(tests/test_dropout_rng.py compares the compiled kernel with the Python rounds, and fails on
a stale one)."""
import numba as nb

from minispp.kernels.philox import mask_group_for, philox4x32_10

_mask_group = nb.njit(cache=True, inline="always")(
    mask_group_for(nb.njit(cache=True, inline="always")(philox4x32_10)))


@nb.njit(parallel=True, cache=True)
def dropout_mask(keys, threshold, scale, out):
    """Fill out (N, D) with the inverted-dropout mask: row n from its 64-bit key keys[n],
    its elements 4g..4g+3 from the 4 words of counter (g, 0, 0, 0); element j is scale where
    its word is >= threshold (kept), else 0 (minispp.kernels.philox.mask_group_for)."""
    n, d = out.shape
    for t in nb.prange(n * ((d + 3) // 4)):
        _mask_group(keys, threshold, scale, out, t)
