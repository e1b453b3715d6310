"""A linear SVM trained in place on float16 rows: dual coordinate descent for the hinge loss
(Hsieh, Chang, Lin, Keerthi, Sundararajan, "A Dual Coordinate Descent Method for Large-scale
Linear SVM", ICML 2008, Algorithm 1 with its shrinking), the method liblinear's dual solver
uses, written here so that the detector's SVMs need no copy of their training data.

The problem, for rows x_i (scaled by `scale`), labels y_i in {-1, +1} and costs C_i:

    min_w  1/2 |w|^2 + sum_i C_i max(0, 1 - y_i w . [scale x_i, B])

with the bias as one more feature of constant value B (regularized, as liblinear's
intercept_scaling does); the intercept is B w_B. Its dual, min_a 1/2 a^T Q a - sum a with
0 <= a_i <= C_i and Q_ij = y_i y_j [scale x_i, B] . [scale x_j, B], is solved one a_i at a
time in a shuffled order, keeping w = sum_i a_i y_i [scale x_i, B], until the projected
gradients' spread max PG - min PG is at most `tol` over every row (liblinear's stopping rule).

The solver keeps the rows' nonzeros only, as (column uint16, value float32) pairs: 6 bytes
a nonzero, built straight from the caller's float16 blocks (fc7 after ReLU is about a
quarter nonzero, so about 0.7 times the float16 rows' bytes). A scikit-learn LinearSVC of
the same rows first copies them to float64 and then to liblinear's (index, value) pairs,
about 7 times the float16 bytes (docs/design.md, "Memory and disk"). Deterministic: the
order of the rows comes from a seeded xorshift generator, and every sum is in a fixed order."""
from typing import NamedTuple

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _next(state):
    """xorshift64*: (new state, a uniform integer in [0, 2^31))."""
    state ^= state >> np.uint64(12)
    state ^= state << np.uint64(25)
    state ^= state >> np.uint64(27)
    return state, np.int64((state * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(33))


@nb.njit(cache=True)
def _half(h):
    """The float32 value of float16 bit pattern h (a finite value): normal numbers by
    rebiasing the exponent, zeros and subnormals (|x| < 2^-14) as mantissa x 2^-24."""
    em = h & np.uint32(0x7FFF)
    if em < np.uint32(0x0400):
        v = np.float32(em) * np.float32(5.9604644775390625e-08)
    else:
        v = np.uint32((em << np.uint32(13)) + np.uint32(0x38000000)).view(np.float32)
    return -v if h & np.uint32(0x8000) else v


@nb.njit(cache=True)
def _count_nonzero(bits, indptr, start):
    """indptr[start + i + 1] = indptr[start + i] + nonzeros of row i; -1 - i for the first
    row i holding inf or NaN, else 0."""
    n, D = bits.shape
    for i in range(n):
        c = 0
        for j in range(D):
            h = bits[i, j]
            if h & np.uint16(0x7C00) == np.uint16(0x7C00):          # inf or NaN
                return -1 - i
            if h & np.uint16(0x7FFF) != 0:
                c += 1
        indptr[start + i + 1] = indptr[start + i] + c
    return 0


@nb.njit(cache=True)
def _fill(bits, indptr, start, cols, vals):
    n, D = bits.shape
    for i in range(n):
        k = indptr[start + i]
        for j in range(D):
            h = bits[i, j]
            if h & np.uint16(0x7FFF) != 0:
                cols[k] = j
                vals[k] = _half(np.uint32(h))
                k += 1


class SparseRows(NamedTuple):
    """Rows by their nonzeros: row i's are cols[indptr[i]:indptr[i + 1]] and the same slice
    of vals; dim columns in all."""
    indptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    dim: int


def sparse_rows(*blocks):
    """SparseRows (columns uint16, values float32) of the nonzero entries of
    float16 row blocks (each (n_b, D), D <= 65,536), stacked in the order given: 6 bytes a
    nonzero, built without stacking the blocks. ValueError names a row with inf or NaN."""
    n = sum(len(b) for b in blocks)
    indptr, start = np.zeros(n + 1, np.int64), 0
    for b in blocks:
        bad = _count_nonzero(b.view(np.uint16), indptr, start)
        if bad:
            raise ValueError(f"SVM training row {start - 1 - bad} has a non-finite feature")
        start += len(b)
    cols, vals = np.empty(indptr[-1], np.uint16), np.empty(indptr[-1], np.float32)
    start = 0
    for b in blocks:
        _fill(b.view(np.uint16), indptr, start, cols, vals)
        start += len(b)
    return SparseRows(indptr, cols, vals, blocks[0].shape[1] if blocks else 0)


@nb.njit(cache=True)
def dual_cd(indptr, cols, vals, rows, y, upper, diag, scale, bias, tol, max_epochs, seed, w, alpha):
    """Dual coordinate descent over the sparse rows `rows` of (indptr, cols, vals) (see
    sparse_rows); per training row t: y[t] +-1.0, upper[t] the bound on alpha (C_t for the
    hinge loss, inf for the squared hinge), diag[t] the added diagonal (0 for the hinge
    loss, 1 / (2 C_t) for the squared hinge); w (D + 1,) float64 zero on entry (the last
    entry is the bias weight), alpha zero. Returns the number of epochs run."""
    n = len(rows)
    D = len(w) - 1
    qd = np.empty(n)
    for t in range(n):
        s = 0.0
        for k in range(indptr[rows[t]], indptr[rows[t] + 1]):
            s += vals[k] * vals[k]
        qd[t] = s * scale * scale + bias * bias + diag[t]
    index = np.arange(n)
    active = n
    pg_max_old, pg_min_old = np.inf, -np.inf
    state = np.uint64(seed) * np.uint64(2654435761) + np.uint64(1)
    epoch = 0
    while epoch < max_epochs:
        epoch += 1
        for s in range(active - 1, 0, -1):          # shuffle the active rows
            state, r = _next(state)
            k = r % (s + 1)
            index[s], index[k] = index[k], index[s]
        pg_max, pg_min = -np.inf, np.inf
        s = 0
        while s < active:
            t = index[s]
            lo, hi = indptr[rows[t]], indptr[rows[t] + 1]
            dot = 0.0
            for k in range(lo, hi):
                dot += vals[k] * w[cols[k]]
            g = y[t] * (dot * scale + w[D] * bias) - 1.0 + diag[t] * alpha[t]
            pg = 0.0
            if alpha[t] == 0.0:
                if g > pg_max_old:                   # stays at its bound: shrink it
                    active -= 1
                    index[s], index[active] = index[active], index[s]
                    continue
                if g < 0.0:
                    pg = g
            elif alpha[t] == upper[t]:
                if g < pg_min_old:
                    active -= 1
                    index[s], index[active] = index[active], index[s]
                    continue
                if g > 0.0:
                    pg = g
            else:
                pg = g
            pg_max = max(pg_max, pg)
            pg_min = min(pg_min, pg)
            if abs(pg) > 1e-12:
                old = alpha[t]
                alpha[t] = min(max(old - g / qd[t], 0.0), upper[t])
                d = (alpha[t] - old) * y[t]
                ds = d * scale
                for k in range(lo, hi):
                    w[cols[k]] += ds * vals[k]
                w[D] += d * bias
            s += 1
        if pg_max - pg_min <= tol:
            if active == n:
                break
            active = n                               # check every row before stopping
            pg_max_old, pg_min_old = np.inf, -np.inf
            continue
        pg_max_old = pg_max if pg_max > 0.0 else np.inf
        pg_min_old = pg_min if pg_min < 0.0 else -np.inf
    return epoch


def dense_rows(x, rows=None, transform=None, chunk=64):
    """SparseRows (columns int32, values float32: 8 bytes a nonzero) of the dense rows
    x[rows] (all when None), each chunk of rows passed through transform (a function of a
    (m, D) array) first; built chunk by chunk, so nothing of x's size is allocated besides
    the result. ValueError names a row (of x) with inf or NaN."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, np.int64)
    transform = transform or (lambda block: np.asarray(block, np.float32))
    indptr = np.zeros(len(rows) + 1, np.int64)

    def blocks():
        for a in range(0, len(rows), chunk):
            yield a, transform(x[rows[a:a + chunk]])

    for a, block in blocks():
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise ValueError(f"SVM training row {int(rows[a + np.flatnonzero(bad)[0]])} has a "
                             f"non-finite feature")
        indptr[a + 1:a + 1 + len(block)] = np.count_nonzero(block, axis=1)
    np.cumsum(indptr, out=indptr)
    cols, vals = np.empty(indptr[-1], np.int32), np.empty(indptr[-1], np.float32)
    for a, block in blocks():
        r, c = np.nonzero(block)                     # row-major: the CSR order
        lo, hi = indptr[a], indptr[a + len(block)]
        cols[lo:hi], vals[lo:hi] = c, block[r, c]
    return SparseRows(indptr, cols, vals, x.shape[1])


def linear_svm(csr, y, C, rows=None, pos_weight=1.0, loss="hinge", scale=1.0, bias=1.0,
               tol=1e-4, max_epochs=20000, seed=0):
    """(coef (D,) float32, intercept float32, epochs) of the L2-regularized linear SVM
    (loss "hinge" or "squared_hinge", as LinearSVC's dual solver) on the rows `rows` (all
    when None) of csr, SparseRows from sparse_rows or dense_rows, times `scale`;
    labels y (one per training row) in {0, 1} or booleans; cost C for label 0 and
    C x pos_weight for label 1; the bias as one more feature of value `bias`."""
    indptr, cols, vals = csr.indptr, csr.cols, csr.vals
    n_all = len(indptr) - 1
    rows = np.arange(n_all) if rows is None else np.asarray(rows, np.int64)
    y = np.asarray(y)
    if y.shape != rows.shape:
        raise ValueError(f"{len(rows)} rows but {y.shape} labels")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_all):
        raise ValueError(f"row indices must lie in [0, {n_all})")
    if not (np.isfinite(C) and C > 0 and np.isfinite(pos_weight) and pos_weight > 0):
        raise ValueError(f"C and pos_weight must be positive, got {C} and {pos_weight}")
    if loss not in ("hinge", "squared_hinge"):
        raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {loss!r}")
    sign = np.where(y.astype(bool), 1.0, -1.0)
    cost = np.where(sign > 0, C * pos_weight, C).astype(np.float64)
    if loss == "hinge":
        upper, diag = cost, np.zeros(len(rows))
    else:
        upper, diag = np.full(len(rows), np.inf), 0.5 / cost
    w, alpha = np.zeros(csr.dim + 1), np.zeros(len(rows))
    epochs = dual_cd(indptr, cols, vals, rows, sign, upper, diag, float(scale), float(bias),
                     float(tol), int(max_epochs), int(seed), w, alpha)
    return w[:-1].astype(np.float32), np.float32(w[-1] * bias), int(epochs)


def hinge_svm(blocks, y, C, pos_weight=1.0, scale=1.0, bias=10.0, tol=1e-4, max_epochs=20000,
              seed=0):
    """(coef (D,) float32, intercept float32, epochs) of the L2-regularized hinge-loss SVM on
    the rows of the float16 blocks (a list of (n_b, D) arrays, stacked in order, or one
    array) times `scale`, labels y (n,) in {0, 1} (or booleans), cost C for label 0 and
    C x pos_weight for label 1, bias feature B = `bias` (see the module docstring). The
    blocks are read, not copied: the solver holds their nonzeros, 6 bytes each."""
    blocks = [blocks] if isinstance(blocks, np.ndarray) else list(blocks)
    blocks = [np.ascontiguousarray(b) for b in blocks]
    D = blocks[0].shape[1] if blocks and blocks[0].ndim == 2 else -1
    for b in blocks:
        if b.dtype != np.float16 or b.ndim != 2 or b.shape[1] != D:
            raise TypeError(f"hinge_svm takes float16 blocks of (n, D) rows, got {b.dtype} {b.shape}")
    if D > 2 ** 16:
        raise ValueError(f"hinge_svm takes at most 65,536 features, got {D}")
    if np.shape(y) != (sum(len(b) for b in blocks),):         # before the rows are read
        raise ValueError(f"{sum(len(b) for b in blocks)} rows but {np.shape(y)} labels")
    return linear_svm(sparse_rows(*blocks), y, C, None, pos_weight, "hinge", scale, bias, tol,
                      max_epochs, seed)
