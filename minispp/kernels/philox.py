"""Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw ("Parallel
random numbers: as easy as 1, 2, 3", SC'11), as one plain function that both targets compile:
the CPU kernels with ``numba.njit`` and the GPU kernels with ``numba.cuda.jit(device=True)``.
Dropout masks are drawn with it (docs/design.md, "Random numbers"), so a mask is a pure function
of a 64-bit key and an element's index: the CPU and the GPU draw the same bits, and the GPU
draws them on the device with nothing copied but the keys.

Every value is a uint64 holding 32 bits. The only products are of two 32-bit words (below
2**64) and the only sums are a 32-bit word plus a 32-bit constant, masked back to 32 bits, so
no operation wraps: the same code gives the same bits compiled (where wrapping would be
harmless) and run as Python under Numba's CUDA simulator (where NumPy would warn).

A round maps counter (c0, c1, c2, c3) and key (k0, k1) to
    (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0));
between rounds the key is bumped by the Weyl constants (k0 + W0, k1 + W1) mod 2**32.
tests/test_dropout_rng.py checks the three published answers for Philox4x32-10.
"""
import numpy as np

M0 = np.uint64(0xD2511F53)        # round multipliers
M1 = np.uint64(0xCD9E8D57)
W0 = np.uint64(0x9E3779B9)        # key bumps (the golden ratio and sqrt(3) - 1, as 32 bits)
W1 = np.uint64(0xBB67AE85)
LOW32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
ROUNDS = 10


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The 4 words (uint64 values below 2**32) for counter (c0..c3) and key (k0, k1)."""
    for r in range(ROUNDS):
        if r > 0:
            k0 = (k0 + W0) & LOW32
            k1 = (k1 + W1) & LOW32
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & LOW32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & LOW32
    return c0, c1, c2, c3


def mask_group_for(philox):
    """The body of both dropout kernels (minispp/kernels/cpu/dropout.py and .../gpu/dropout.py)
    over `philox`, philox4x32_10 compiled for the kernel's target:

    mask_group(keys, threshold, scale, out, t) writes units 4g..4g+3 of row r of the mask
    out (N, D), where t = r x groups + g and groups = ceil(D / 4): the 4 words of counter
    (g, 0, 0, 0) under row r's 64-bit key (low 32 bits first); a unit is scale where its word
    is >= threshold (kept), else 0."""
    def mask_group(keys, threshold, scale, out, t):
        d = out.shape[1]
        groups = (d + 3) // 4
        r = t // groups
        g = t - r * groups
        key = keys[r]
        zero = np.uint64(0)
        words = philox(np.uint64(g), zero, zero, zero, key & LOW32, key >> SHIFT32)
        for q in range(4):
            j = 4 * g + q
            if j < d:
                if words[q] >= threshold:
                    out[r, j] = scale
                else:
                    out[r, j] = 0
    return mask_group


def keep_threshold(ratio):
    """The uint64 T with which a word w keeps its unit when w >= T: P(keep) = 1 - T / 2**32,
    which is 1 - ratio to within 2**-33."""
    return np.uint64(min(int(round(float(ratio) * 2.0 ** 32)), 2 ** 32))
