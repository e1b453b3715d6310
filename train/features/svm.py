"""Linear SVMs on cached full-image features (paper Sec. 3.2-3.3).

Features are l2-normalized, then one linear SVM per class (one-vs-rest; the squared hinge
loss with a bias feature of 1, as scikit-learn's LinearSVC by default, solved by the dual
coordinate descent of minispp/kernels/cpu/linear_svm.py). The features are held once, in
float32, with their nonzeros for the solver (8 bytes each); every fit takes its rows by
index, so no subset of the features is copied (README, "VOC 2007 at its real size"). The SVM cost C is chosen on a validation split of the training data only
(20% of it, seeded), never on the test data, then the SVMs are refit on all the training
data with that C.

  VOC 2007 (multi-label): per class, images labelled 0 are left out of training; AP per
      class as the devkit computes it, and mAP.
  Class folders (single label): accuracy and mean per-class accuracy on the test split.
  Caltech101: 10 seeded splits of 30 training / up to 50 test images per class from one
      cache; mean per-class accuracy, its mean and standard deviation over the splits.

Labels are indices into a cache's class list, so a train and a test cache whose lists
differ (names or order) are refused (ClassListMismatch) rather than scored against each
other. Images skipped as unreadable at extraction (``--skip-unreadable``: valid False, zero
features) are left out of training and testing, and reported (count and first ids).
"""
import math
import os
import sys
import time

import numpy as np
from minispp.data.caltech import caltech_split
from minispp.kernels.cpu.linear_svm import dense_rows, linear_svm

from train.voc_eval import classification_map

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def l2_normalize(x):
    """A float32 copy of x (n, D) with rows scaled to unit Euclidean length (all-zero rows
    stay zero)."""
    x = np.array(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    x *= (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)[:, None]
    return x


class Rows:
    """Training rows: features[index] (the cache's array and the rows used), l2-normalized
    chunk by chunk into their nonzeros for the solver; no normalized dense copy is held."""

    def __init__(self, features, index=None):
        self.features = features
        self.index = np.arange(len(features)) if index is None else np.asarray(index, np.int64)
        self.sparse = dense_rows(features, self.index, l2_normalize)

    def __len__(self):
        return len(self.index)

    def scores(self, models, positions=None):
        """models' decision values on the rows at `positions` (all when None)."""
        return score_rows(models, self.features, self.index if positions is None else
                          self.index[positions])


def score_rows(models, features, index, chunk=64):
    """(len(index), K) decision values of models on the l2-normalized features[index],
    normalized chunk by chunk."""
    out = np.empty((len(index), len(models.coef)))
    for a in range(0, len(index), chunk):
        out[a:a + chunk] = models.decision_function(l2_normalize(features[index[a:a + chunk]]))
    return out


class SVMs:
    """Linear SVMs, one per row of coef (K, D); `trained` False for a class with only one
    kind of label (its scores are 0). classes: the labels of the rows (single-label)."""

    def __init__(self, coef, intercept, trained, classes=None):
        self.coef, self.intercept, self.trained, self.classes = coef, intercept, trained, classes

    def decision_function(self, x):
        out = np.asarray(x, dtype=np.float32) @ self.coef.T + self.intercept
        out[:, ~self.trained] = 0
        return out.astype(np.float64)

    def labels(self, s):
        """The predicted labels from decision values s."""
        if len(self.classes) == 2:                      # one SVM, class 1 against class 0
            return self.classes[(s[:, 0] > 0).astype(np.int64)]
        return self.classes[np.argmax(s, axis=1)]

    def predict(self, x):
        return self.labels(self.decision_function(x))


def _fit_binary(rows, index, y, C):
    """(coef, intercept) of one SVM on the training rows at positions `index`, labels y
    (booleans)."""
    w, b, _ = linear_svm(rows.sparse, y, C, rows=index, loss="squared_hinge", bias=1.0,
                         max_epochs=20000)
    return w, b


def fit_multilabel(rows, labels, C, index=None):
    """One SVM per column of labels (len(index), K) in {1, 0, -1} for the rows `index` (all
    when None); rows labelled 0 are left out of that class's training. An SVMs whose
    `trained` is False for a class with only one kind of label in the training data."""
    index = np.arange(len(rows)) if index is None else np.asarray(index)
    K, D = labels.shape[1], rows.sparse.dim
    coef, intercept, trained = np.zeros((K, D), np.float32), np.zeros(K, np.float32), np.zeros(K, bool)
    for k in range(K):
        use = labels[:, k] != 0
        y = labels[use, k] == 1
        if 0 < y.sum() < len(y):
            coef[k], intercept[k] = _fit_binary(rows, index[use], y, C)
            trained[k] = True
    return SVMs(coef, intercept, trained)


def fit_multiclass(rows, y, C, index=None):
    """One-vs-rest SVMs over the classes present in y (one SVM when there are two)."""
    index = np.arange(len(rows)) if index is None else np.asarray(index)
    classes = np.unique(y)
    targets = classes[1:] if len(classes) == 2 else classes
    fits = [_fit_binary(rows, index, y == c, C) for c in targets]
    return SVMs(np.stack([w for w, _ in fits]), np.array([b for _, b in fits], np.float32),
                np.ones(len(fits), bool), classes)


def per_class_accuracy(y_true, y_pred):
    """(overall accuracy, mean over classes of the per-class accuracy)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per = [np.mean(y_pred[y_true == k] == k) for k in np.unique(y_true)]
    return float(np.mean(y_true == y_pred)), float(np.mean(per))


def validation_split(n, labels, seed, fraction=0.2):
    """(fit indices, validation indices): a seeded fraction of every class (single-label
    labels (N,)) or of all rows (multi-label (N, K)), at least one row each side."""
    rng = np.random.default_rng(seed)
    if labels.ndim == 1:
        val = []
        for k in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == k))
            if len(idx) > 1:
                val.extend(idx[:max(1, int(round(fraction * len(idx))))])
        val = np.array(sorted(val), dtype=np.int64)
    else:
        val = np.sort(rng.permutation(n)[:max(1, int(round(fraction * n)))])
    fit = np.setdiff1d(np.arange(n), val)
    return fit, val


def choose_C(rows, labels, grid=C_GRID, seed=0, index=None):
    """(best C, {C: validation score}) with score mAP (multi-label) or mean per-class
    accuracy (single label), on a validation split of the training rows `index` of rows
    (all when None; labels: one per row of index)."""
    index = np.arange(len(rows)) if index is None else np.asarray(index)
    fit, val = validation_split(len(index), labels, seed)
    scores = {}
    for C in grid:
        if labels.ndim == 1:
            models = fit_multiclass(rows, labels[fit], C, index[fit])
            scores[C] = per_class_accuracy(labels[val], models.labels(rows.scores(models, index[val])))[1]
        else:
            s = rows.scores(fit_multilabel(rows, labels[fit], C, index[fit]), index[val])
            scores[C] = classification_map(s, labels[val], range(labels.shape[1]))["mAP"]
    finite = {C: v for C, v in scores.items() if np.isfinite(v)}
    best = max(finite, key=lambda C: (finite[C], -C)) if finite else grid[len(grid) // 2]
    return best, scores


class ClassListMismatch(ValueError):
    """Train and test caches whose class lists differ: their labels index other classes."""


def check_C(C):
    """C itself if None (search) or a finite positive number, else ValueError."""
    if C is None:
        return None
    if isinstance(C, bool) or not isinstance(C, (int, float, np.floating, np.integer)) \
            or not math.isfinite(C) or C <= 0:
        raise ValueError(f"--C (the SVM cost) must be a positive number, got {C!r}")
    return float(C)


def check_writable(path, what="--json"):
    """ValueError now, before any work, if a result cannot be written to path (missing or
    unwritable folder, a folder at path)."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path} cannot be written (no permission)")


def check_same_classes(train, test):
    """ClassListMismatch naming the difference unless train and test have the same class
    names in the same order (labels are indices into that list)."""
    a, b = list(train.classes), list(test.classes)
    if a == b:
        return
    if set(a) == set(b):
        what = "the same classes in another order"
    else:
        parts = []
        if set(a) - set(b):
            parts.append(f"only the training cache has {sorted(set(a) - set(b))}")
        if set(b) - set(a):
            parts.append(f"only the test cache has {sorted(set(b) - set(a))}")
        what = ", ".join(parts)
    old = [fs.path for fs in (train, test)
           if "classes" not in (getattr(fs, "identity", None) or {"classes": 1})]
    note = (f"; {' and '.join(old)} predate(s) class lists in a cache's identity: extract "
            f"again with this version" if old else "")
    raise ClassListMismatch(
        f"train cache {train.path} ({len(a)} classes) and test cache {test.path} ({len(b)} "
        f"classes) have different class lists: {what}; their labels cannot be compared. "
        f"Extract both from the same data set with this version (labels index the data set's "
        f"class list, whatever lists a split has){note}")


def _valid(fs, what):
    """Indices of the readable rows; the skipped ones are reported (count and first ids)."""
    bad = fs.unreadable() if hasattr(fs, "unreadable") else \
        [fs.ids[i] for i in np.flatnonzero(~np.asarray(fs.valid, dtype=bool))]
    if bad:
        print(f"{what}: leaving out {len(bad)} image(s) skipped as unreadable at extraction: "
              f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
    ok = np.flatnonzero(fs.valid)
    if len(ok) == 0:
        raise ValueError(f"{what}: every image was skipped as unreadable; nothing to use")
    return ok


def _skipped(fs):
    return [fs.ids[i] for i in np.flatnonzero(~np.asarray(fs.valid, dtype=bool))]


def voc_classification(train, test, C=None, grid=C_GRID, seed=0):
    """Train on one VOC cache, test on another; {'per_class', 'mAP', 'C', 'C_search',
    'seconds'}."""
    t0 = time.perf_counter()
    C = check_C(C)
    check_same_classes(train, test)
    tr, te = _valid(train, train.path), _valid(test, test.path)
    xtr, ytr = Rows(train.features, tr), train.labels[tr]
    yte = test.labels[te]
    search = None
    if C is None:
        C, search = choose_C(xtr, ytr, grid, seed)
    models = fit_multilabel(xtr, ytr, C)
    untrained = [c for c, t in zip(train.classes, models.trained) if not t]
    if untrained:
        print(f"{train.path}: no SVM for {len(untrained)} class(es) with only positive or only "
              f"negative training images (their scores are all 0): {', '.join(untrained)}",
              file=sys.stderr)
    result = classification_map(score_rows(models, test.features, te), yte, test.classes)
    result.update(task="voc07-classification", C=C, C_search=search, train_images=len(tr),
                  test_images=len(te), train_skipped=_skipped(train), test_skipped=_skipped(test),
                  untrained_classes=untrained, seconds=time.perf_counter() - t0)
    return result


def folder_classification(train, test, C=None, grid=C_GRID, seed=0):
    """Single-label train and test caches; {'accuracy', 'mean_class_accuracy', 'C', ...}."""
    t0 = time.perf_counter()
    C = check_C(C)
    check_same_classes(train, test)
    tr, te = _valid(train, train.path), _valid(test, test.path)
    xtr, ytr = Rows(train.features, tr), train.labels[tr]
    search = None
    if C is None:
        C, search = choose_C(xtr, ytr, grid, seed)
    models = fit_multiclass(xtr, ytr, C)
    pred = models.labels(score_rows(models, test.features, te))
    acc, mca = per_class_accuracy(test.labels[te], pred)
    return {"task": "classification", "accuracy": acc, "mean_class_accuracy": mca, "C": C,
            "C_search": search, "train_images": len(tr), "test_images": len(te),
            "train_skipped": _skipped(train), "test_skipped": _skipped(test),
            "seconds": time.perf_counter() - t0}


def caltech_classification(fs, splits=10, train_per_class=30, test_per_class=50, C=None,
                           grid=C_GRID):
    """The Caltech101 protocol on one cache of every image: per split s (seed s), C chosen on
    the split's training images, mean per-class accuracy on its test images."""
    t0 = time.perf_counter()
    C = check_C(C)
    for value, what in ((splits, "--splits"), (train_per_class, "training images per class"),
                        (test_per_class, "test images per class")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    ok = _valid(fs, fs.path)
    x, y = Rows(fs.features, ok), fs.labels[ok]
    runs = []
    for s in range(splits):
        tr, te = caltech_split(y, s, train_per_class, test_per_class)
        c = C if C is not None else choose_C(x, y[tr], grid, seed=s, index=tr)[0]
        models = fit_multiclass(x, y[tr], c, tr)
        pred = models.labels(x.scores(models, te))
        acc, mca = per_class_accuracy(y[te], pred)
        runs.append({"split": s, "C": c, "accuracy": acc, "mean_class_accuracy": mca})
    m = np.array([r["mean_class_accuracy"] for r in runs])
    return {"task": "caltech101", "mean_class_accuracy": float(m.mean()),
            "std": float(m.std(ddof=1)) if len(m) > 1 else 0.0, "splits": runs,
            "skipped": _skipped(fs), "seconds": time.perf_counter() - t0}


def classify_caches(train_path, test_path=None, C=None, splits=10):
    """The SVM stage on feature caches, as `minispp svm` runs it: reads and pairs the
    caches (same model, arguments, class list; different images), then VOC07 mAP, class
    folder accuracy or Caltech101's mean per-class accuracy over `splits` splits. Returns
    the result dict with "kind" ("voc", "folder" or "caltech") and the training identity."""
    from minispp.storage.feature_cache import check_identity, read_cache
    check_C(C)
    if splits < 1:
        raise ValueError(f"--splits must be a positive integer, got {splits}")
    train = read_cache(train_path)
    test = read_cache(test_path) if test_path else None
    kind = train.identity.get("data")
    if test is not None:
        same = ("checkpoint", "net", "net_args", "layer", "scale", "view", "data", "mean")
        check_identity(test_path, {k: test.identity.get(k) for k in same},
                       {k: train.identity.get(k) for k in same},
                       advice=f"Train and test features must come from the same model and "
                              f"arguments (the training cache is {train_path})")
        check_same_classes(train, test)
        if kind != "caltech" and test.identity.get("ids_digest") == train.identity.get("ids_digest"):
            raise ValueError(f"--train {train_path} and --test {test_path} hold the same images "
                             f"(split {train.identity.get('split')!r}): test on another split")
    if kind == "caltech":
        if test is not None and test.identity["ids_digest"] != train.identity["ids_digest"]:
            raise ValueError("Caltech101 splits are drawn from one cache of every image; give "
                             "--train (and optionally the same file as --test)")
        r = caltech_classification(train, splits=splits, C=C)
    elif test is None:
        raise ValueError(f"{train_path} is a {kind} cache: give --test CACHE")
    elif kind == "voc":
        r = voc_classification(train, test, C=C)
    else:
        r = folder_classification(train, test, C=C)
    r.update(kind=kind, train=os.path.abspath(train_path),
             test=os.path.abspath(test_path) if test_path else None, identity=train.identity)
    return r
