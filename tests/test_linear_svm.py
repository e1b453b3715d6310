"""The detector's SVM solver (minispp/kernels/cpu/linear_svm.py): dual coordinate descent on
float16 rows, against scikit-learn's LinearSVC (liblinear) on the same problem."""
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from minispp.kernels.cpu.linear_svm import dense_rows, hinge_svm, linear_svm, sparse_rows


def relu_rows(rng, n, D, density=0.25):
    """ReLU-like float16 rows: about `density` of the entries nonzero, as fc7's."""
    x = rng.standard_normal((n, D)).astype(np.float32) + 0.5
    return np.where(rng.random((n, D)) < density, np.abs(x), 0).astype(np.float16)


def problem(seed=0, n=600, D=64):
    rng = np.random.default_rng(seed)
    x = relu_rows(rng, n, D)
    w = rng.standard_normal(D)
    y = x.astype(np.float64) @ w + 0.3 * rng.standard_normal(n) > 0.8    # noisy: not separable
    return x, y


def objective(x, y, w, b, C, pos_weight, scale, bias):
    m = 1 - np.where(y, 1, -1) * (scale * x.astype(np.float64) @ w + b)
    return 0.5 * (w @ w + (b / bias) ** 2) + (np.where(y, C * pos_weight, C) * np.maximum(m, 0)).sum()


@pytest.mark.parametrize("C", [0.05, 0.2])
def test_hinge_svm_matches_liblinear(C):
    x, y = problem()
    scale, bias, pw = 0.7, 10.0, 2.0
    w, b, epochs = hinge_svm(x, y, C, pw, scale, bias, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = LinearSVC(C=C, loss="hinge", dual=True, class_weight={1: pw, 0: 1.0}, tol=1e-6,
                        intercept_scaling=bias, max_iter=100000, random_state=0)
        ref.fit(x.astype(np.float64) * scale, y)
    assert epochs < 20000
    wr, br = ref.coef_[0], ref.intercept_[0]
    assert np.linalg.norm(w - wr) <= 1e-3 * np.linalg.norm(wr)
    assert abs(b - br) <= 1e-3 * max(1.0, abs(br))
    f, fr = (objective(x, y, v.astype(np.float64), c, C, pw, scale, bias) for v, c in [(w, b), (wr, br)])
    assert f == pytest.approx(fr, rel=1e-6)
    # the decision values agree
    s, sr = scale * x.astype(np.float64) @ w + b, scale * x.astype(np.float64) @ wr + br
    assert np.abs(s - sr).max() < 1e-3 * max(1.0, np.abs(sr).max())


def test_blocks_are_the_stacked_rows_and_runs_repeat_bit_for_bit():
    x, y = problem(1)
    one = hinge_svm(x, y, 0.1, 2.0, 1.3)
    two = hinge_svm([x[:17], x[17:]], y, 0.1, 2.0, 1.3)
    again = hinge_svm(x, y, 0.1, 2.0, 1.3)
    for a, b in [(one, two), (one, again)]:
        assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    other_seed = hinge_svm(x, y, 0.1, 2.0, 1.3, seed=5)
    assert not np.array_equal(one[0], other_seed[0])          # the order of the rows matters
    assert np.allclose(one[0], other_seed[0], atol=1e-2 * np.abs(one[0]).max())


def test_sparse_rows_decode_every_float16_exactly():
    finite = np.arange(2 ** 16, dtype=np.uint16).view(np.float16)
    finite = finite[np.isfinite(finite)]
    rows = np.resize(finite, (len(finite) // 64 + 1) * 64).reshape(-1, 64)   # subnormals, zeros, signs
    indptr, cols, vals, dim = sparse_rows(rows[:5], rows[5:])
    assert dim == 64
    dense = np.zeros(rows.shape, np.float32)
    for i in range(len(rows)):
        dense[i, cols[indptr[i]:indptr[i + 1]]] = vals[indptr[i]:indptr[i + 1]]
    assert np.array_equal(dense, rows.astype(np.float32))
    assert indptr[-1] == np.count_nonzero(rows)                 # -0.0 and 0.0 are left out


def test_a_non_finite_row_is_named():
    x, y = problem()
    x[123, 7] = np.inf
    with pytest.raises(ValueError, match="row 123 has a non-finite"):
        hinge_svm([x[:100], x[100:]], y, 0.1)
    x[123, 7] = np.nan
    with pytest.raises(ValueError, match="row 123 "):
        hinge_svm(x, y, 0.1)
    with pytest.raises(TypeError, match="float16"):
        hinge_svm(x.astype(np.float32), y, 0.1)
    with pytest.raises(ValueError, match="labels"):
        hinge_svm(x, y[:-1], 0.1)


def test_the_rows_are_not_copied():
    """The solver holds the nonzeros (6 bytes each, a quarter of the entries here: 0.75x the
    float16 bytes), not a float32 or float64 copy of the rows (2x or 4x)."""
    rng = np.random.default_rng(3)
    x = relu_rows(rng, 4000, 512)
    y = rng.random(4000) < 0.1
    tracemalloc.start()
    try:
        hinge_svm([x[:2000], x[2000:]], y, 0.05, max_epochs=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.9 * x.nbytes, (peak, x.nbytes)


def test_squared_hinge_on_a_subset_of_dense_rows_matches_liblinear():
    """The `minispp svm` path: float32 rows, LinearSVC's default loss and bias 1, trained on
    a subset of the rows given by index (no copy of the subset)."""
    x, y = problem(2, n=800)
    x = x.astype(np.float32) / 3
    rows = np.flatnonzero(np.arange(len(x)) % 5 != 0)
    w, b, _ = linear_svm(dense_rows(x), y[rows], 0.5, rows=rows, loss="squared_hinge", tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = LinearSVC(C=0.5, dual=True, tol=1e-6, max_iter=100000, random_state=0)
        ref.fit(x[rows].astype(np.float64), y[rows])
    assert np.linalg.norm(w - ref.coef_[0]) <= 1e-3 * np.linalg.norm(ref.coef_[0])
    assert abs(b - ref.intercept_[0]) <= 1e-3 * max(1.0, abs(ref.intercept_[0]))
    # the subset matters: all rows give another SVM
    w_all, _, _ = linear_svm(dense_rows(x), y, 0.5, loss="squared_hinge", tol=1e-6)
    assert np.linalg.norm(w_all - w) > 1e-2 * np.linalg.norm(w)
    with pytest.raises(ValueError, match="row 3 has a non-finite"):
        x[3, 0] = np.nan
        dense_rows(x)
