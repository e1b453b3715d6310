"""Linear SVMs on cached full-image features (paper Sec. 3.2-3.3).

Features are l2-normalized, then one linear SVM per class (scikit-learn's LinearSVC,
one-vs-rest). The SVM cost C is chosen on a validation split of the training data only
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
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from minispp.data.caltech import caltech_split

from train.voc_eval import classification_map

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def l2_normalize(x):
    """Rows scaled to unit Euclidean length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _svc(C):
    return LinearSVC(C=C, dual=True, max_iter=20000, random_state=0)


def _fit_binary(x, y, C):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _svc(C).fit(x, y)


def fit_multilabel(x, labels, C):
    """One SVM per column of labels (N, K) in {1, 0, -1}; rows labelled 0 are left out of
    that class's training. Returns a list of fitted LinearSVC (None for a class with only
    one kind of label in the training data)."""
    models = []
    for k in range(labels.shape[1]):
        use = labels[:, k] != 0
        y = labels[use, k] == 1
        models.append(_fit_binary(x[use], y, C) if 0 < y.sum() < len(y) else None)
    return models


def score_multilabel(models, x):
    return np.stack([m.decision_function(x) if m is not None else np.zeros(len(x))
                     for m in models], axis=1)


def fit_multiclass(x, y, C):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _svc(C).fit(x, y)


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


def choose_C(x, labels, grid=C_GRID, seed=0):
    """(best C, {C: validation score}) with score mAP (multi-label) or mean per-class
    accuracy (single label), on a validation split of the training rows given."""
    fit, val = validation_split(len(x), labels, seed)
    scores = {}
    for C in grid:
        if labels.ndim == 1:
            pred = fit_multiclass(x[fit], labels[fit], C).predict(x[val])
            scores[C] = per_class_accuracy(labels[val], pred)[1]
        else:
            s = score_multilabel(fit_multilabel(x[fit], labels[fit], C), x[val])
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
    xtr, ytr = l2_normalize(train.features[tr]), train.labels[tr]
    xte, yte = l2_normalize(test.features[te]), test.labels[te]
    search = None
    if C is None:
        C, search = choose_C(xtr, ytr, grid, seed)
    models = fit_multilabel(xtr, ytr, C)
    untrained = [c for c, m in zip(train.classes, models) if m is None]
    if untrained:
        print(f"{train.path}: no SVM for {len(untrained)} class(es) with only positive or only "
              f"negative training images (their scores are all 0): {', '.join(untrained)}",
              file=sys.stderr)
    result = classification_map(score_multilabel(models, xte), yte, test.classes)
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
    xtr, ytr = l2_normalize(train.features[tr]), train.labels[tr]
    search = None
    if C is None:
        C, search = choose_C(xtr, ytr, grid, seed)
    pred = fit_multiclass(xtr, ytr, C).predict(l2_normalize(test.features[te]))
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
    x, y = l2_normalize(fs.features[ok]), fs.labels[ok]
    runs = []
    for s in range(splits):
        tr, te = caltech_split(y, s, train_per_class, test_per_class)
        c = C if C is not None else choose_C(x[tr], y[tr], grid, seed=s)[0]
        pred = fit_multiclass(x[tr], y[tr], c).predict(x[te])
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
