"""The detector's per-class linear SVMs with hard negative mining and its bounding-box
regressors (paper Sec. 4.1; R-CNN's negative rules and box regression parameterization).

Both stream over the training images, so that their memory is set by settings, not by the
number of images (docs/design.md, "Feature caches": the conv5 maps are cached per image).

SVMs (``train_svms``), as R-CNN trained them: the positives (the ground-truth boxes of each
class) are in memory; each class's current cache of negatives waits in a scratch file (its
float16 features; the windows' indices and ranks in memory), and is read into memory only
to fit that class, one class at a time, so the stage's memory does not grow with the
caches (at most 1.25 x ``svm_cache_windows`` x 8 KB for one class's fit); the features of
every other window are recomputed image by image from the conv5 cache (pool, then fc7),
one image at a time. A pass over the windows' geometry alone picks the initial random
negatives of every class and a uniform sample of windows for the features' scale; one pass
over the images then computes the features of those windows and the positives only (at
1,700 windows an image, about 16 of them on VOC 2007 trainval for 20 classes x 4,000); each
hard-negative round is one more pass, scoring every window of an image for every class at
once. The cost is about hard_rounds x images of fc7 passes, and the cache
of a class never holds more than ``svm_cache_windows`` negatives: when the hard negatives
found in a round would make it larger, the highest-scoring ``svm_cache_windows`` of the
cache and the new ones are kept (ties: the earlier image, then the earlier window).
``train_svms_in_memory`` is the same training with every window's features of every image
in memory (16 MB per image for fc7 in float16), the reference the streaming trainer is
tested against.

The random sample is a function of (seed, class, image index, window index) only: each
negative gets a 64-bit hash of the four, and the ``svm_init_negatives`` negatives of the
class with the smallest hashes are the initial cache, a uniform random sample that both
trainers draw alike, whatever order they see the windows in.

Box regression (``train_box_regressors``): ridge regression with an intercept (centred, as
sklearn's Ridge) from pooled conv5 features to the targets, from sufficient statistics
accumulated image by image in float64 (n, sum x, sum t, X^T X, X^T t), or, for a class with
at most D / 2 rows, its rows and the kernel form (as sklearn solves it when there are fewer
rows than features). The statistics of the classes are held together as far as
``bbox_stats_mb`` allows (X^T X is D x D float64: 1.25 GiB for ZF-5's pool5, D = 12,800),
one pass over the images per group of classes.
"""
import os
import tempfile
import warnings

import numpy as np
from tqdm import tqdm

from minispp.detection.boxes import nms, regression_targets
from minispp.kernels.cpu.linear_svm import hinge_svm

SVM_BIAS, SVM_MAX_EPOCHS = 10.0, 20000     # the bias feature (liblinear's intercept_scaling)

_GOLDEN, _M1, _M2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
                     np.uint64(0x94D049BB133111EB))


def svm_negatives(image, c, neg_iou=0.3, neg_neg=0.7):
    """Rows of image.windows that are negatives for class c: proposals with IoU <= neg_iou
    with every ground-truth box of c, dropping any that overlaps an earlier kept negative by
    more than neg_neg (proposals are in rank order)."""
    cand = np.flatnonzero(~image.is_gt & (image.class_overlap(c) <= neg_iou))
    if cand.size == 0:
        return cand
    keep = nms(image.windows[cand], -np.arange(len(cand), dtype=np.float64), neg_neg)
    return np.sort(cand[keep])


def _mix64(x):
    """splitmix64's finalizer on a uint64 array (arithmetic modulo 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def negative_keys(seed, c, j, rows):
    """(len(rows),) uint64: the random key of each negative (window `rows` of image j, class
    c); the initial cache is the negatives with the smallest keys (ties by j, then row)."""
    with np.errstate(over="ignore"):
        h = _mix64(np.array([int(seed) % 2 ** 64], np.uint64) + _GOLDEN * np.uint64(c + 1))
        h = _mix64(h + _GOLDEN * np.uint64(j + 1))
        return _mix64(h + _GOLDEN * (np.asarray(rows, np.uint64) + np.uint64(1)))


def _fit_svm(x, y, C, pos_weight):
    """The reference solver, scikit-learn's LinearSVC (liblinear) on float32 rows, for tests:
    the same problem as hinge_svm (hinge loss, class weights, bias feature 10)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = LinearSVC(C=C, loss="hinge", dual=True, class_weight={1: pos_weight, 0: 1.0},
                      intercept_scaling=SVM_BIAS, max_iter=SVM_MAX_EPOCHS, random_state=0).fit(x, y)
    return m.coef_[0].astype(np.float32), np.float32(m.intercept_[0])


# ---- the pieces both trainers share -------------------------------------------------------------

def _svm_C(det, n_images):
    if det.config["svm_C"] is not None:
        return det.config["svm_C"]
    from train.detection.detector import svm_C_for
    return svm_C_for(n_images)


def _window_features(det, conv, image, rows=None):
    """(R, D) float16 SVM features (fc7 or pool5, unscaled) of every window of an image (or
    of its windows `rows`, in that order), from its cached conv5 maps; windows on the same
    conv5 cells are run through fc6 and fc7 once."""
    maps, hw = conv.get(image.id, lambda: None)
    windows = image.windows if rows is None else image.windows[rows]
    pooled, inverse = det.pooler.unique(maps, windows, hw)
    f = det.fc7(pooled) if det.config["svm_feature"] == "fc7" else pooled
    return f.astype(np.float16)[inverse]


def _norms(f16):
    return np.linalg.norm(f16.astype(np.float32), axis=1)


def _svm_scale(det, norm_sum, count):
    """The factor that brings the features' mean L2 norm over the norm sample (_first_pass_rows)
    to feature_norm."""
    return float(det.config["feature_norm"] / max(norm_sum / max(count, 1), 1e-6))


class _Smallest:
    """The n entries (key, image, row) with the smallest keys (ties: image, then row) of
    those offered, image by image, in O(n) memory."""

    def __init__(self, n):
        self.n, self.parts, self.size = n, [], 0

    def add(self, keys, j, rows):
        self.parts.append((keys, np.full(len(rows), j, np.int64), np.asarray(rows, np.int64)))
        self.size += len(rows)
        if self.size > 2 * self.n + 1024:
            self.parts = [self._best()]
            self.size = len(self.parts[0][0])

    def _best(self):
        if not self.parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        k, j, r = (np.concatenate(a) for a in zip(*self.parts))
        best = np.lexsort((r, j, k))[:self.n]
        return k[best], j[best], r[best]

    def result(self):
        """(image, row) of the kept entries in (image, row) order."""
        _, j, r = self._best()
        order = np.lexsort((r, j))
        return j[order], r[order]


def _first_pass_rows(det, images, seed):
    """Which windows the first pass needs features of, from the geometry alone (no features):
    per class, the svm_init_negatives negatives with the smallest keys (the initial random
    cache, a function of (seed, class, image, window) only); the svm_norm_windows windows of
    all images with the smallest keys under class -1 (a uniform sample, whose mean feature
    norm sets svm_scale, as R-CNN scaled its features by a sample's mean norm); and each
    class's count of negatives. Every other window's features are first needed by the
    hard-negative rounds, which score them all."""
    cfg, K = det.config, len(det.classes)
    _, n_init = _cache_cap(cfg)
    rules = (cfg["svm_neg_iou"], cfg["svm_neg_neg"])
    init = [_Smallest(n_init) for _ in range(K)]
    n_neg = np.zeros(K, np.int64)
    for j, im in enumerate(images):
        for c in range(K):
            negs = svm_negatives(im, c, *rules)
            n_neg[c] += len(negs)
            init[c].add(negative_keys(seed, c, j, negs), j, negs)
    return [s.result() for s in init], _norm_sample(images, cfg, seed), n_neg


def _norm_sample(images, cfg, seed):
    """(image, row) of the svm_norm_windows windows of all images with the smallest keys
    under class -1: the uniform sample whose mean feature norm sets svm_scale."""
    if int(cfg["svm_norm_windows"]) < 1:
        raise ValueError(f"svm_norm_windows must be at least 1, got {cfg['svm_norm_windows']}")
    sample = _Smallest(int(cfg["svm_norm_windows"]))
    for j, im in enumerate(images):
        rows = np.arange(len(im.windows))
        sample.add(negative_keys(seed, -1, j, rows), j, rows)
    return sample.result()


def _rows_of(index, j):
    """The rows of image j in index = (image, row), sorted by image."""
    ij, r = index
    lo, hi = np.searchsorted(ij, [j, j + 1])
    return r[lo:hi]


def _svm_input(f16, scale):
    return f16.astype(np.float32) * scale


def _scores(f16, scale, W, b):
    """(R, K) SVM scores of an image's windows for every class (one product for all)."""
    return _svm_input(f16, scale) @ W.T + b


def _fit(det, pos16, neg16, C):
    """One class's SVM on its float16 positives and cached negatives, in place (hinge_svm
    holds their nonzeros, not a float64 copy: the SVM stage's memory is the caches')."""
    y = np.concatenate([np.ones(len(pos16), bool), np.zeros(len(neg16), bool)])
    w, b, _ = hinge_svm([pos16, neg16], y, C, det.config["svm_pos_weight"], det.svm_scale,
                        SVM_BIAS, max_epochs=SVM_MAX_EPOCHS)
    return w, b


def _cache_cap(cfg):
    cap, n_init = int(cfg["svm_cache_windows"]), int(cfg["svm_init_negatives"])
    if cap < 1 or n_init < 1:
        raise ValueError(f"svm_cache_windows and svm_init_negatives must be at least 1, got "
                         f"{cap} and {n_init}")
    return cap, min(n_init, cap)


def _round_line(det, c, rnd, found, cached, total, cap):
    full = f"; cache capped at {cap}, the highest-scoring kept" if found and found + cached > cap else ""
    return (f"  {det.classes[c]}: round {rnd + 1}: {found} hard negatives added to {cached} "
            f"(of {total}){full}")


class _RowFile:
    """float16 rows of one width appended to a scratch file in `folder` and read back by
    index; the file is removed by close()."""

    def __init__(self, folder, dim):
        fd, self.path = tempfile.mkstemp(prefix="svm-cache-", suffix=".f16", dir=folder)
        self.fh, self.dim, self.n = os.fdopen(fd, "w+b"), dim, 0

    def append(self, rows):
        """Write rows (m, dim); returns their indices in the file."""
        rows = np.ascontiguousarray(rows, dtype=np.float16)
        self.fh.write(rows.tobytes())
        self.n += len(rows)
        return np.arange(self.n - len(rows), self.n)

    def read(self, index):
        """The rows at `index`, in that order (only their pages of the file are touched)."""
        if len(index) == 0:
            return np.zeros((0, self.dim), np.float16)
        self.fh.flush()
        mapped = np.memmap(self.path, dtype=np.float16, mode="r", shape=(self.n, self.dim))
        try:
            return np.asarray(mapped[np.asarray(index)])     # fancy indexing copies once
        finally:
            del mapped

    def close(self):
        self.fh.close()
        os.remove(self.path)


class _Pool:
    """The windows of one class with the lowest ranks (ties: lower image index, then lower
    window index), at most `cap` of them. Windows are offered image by image; their float16
    features go to a scratch file (_RowFile) and only their image, window, rank and place in
    the file stay in memory (32 bytes a window), so the SVM stage holds one class's features
    at a time, when it fits that class (result), whatever the caches' sizes."""

    def __init__(self, cap, dim, folder):
        self.cap, self.dim, self.slack = cap, dim, max(cap // 4, 64)
        self.file = _RowFile(folder, dim)
        self.parts, self.n, self.worst = [], 0, None

    def add(self, j, rows, rank, feats):
        """Offer windows `rows` of image j, ranked `rank`, with their features feats (one row
        each, in the order of rows)."""
        if self.worst is not None:              # full: nothing ranked after the last kept gets in
            keep = rank <= self.worst
            rows, rank, feats = rows[keep], rank[keep], feats[keep]
        if rows.size == 0:
            return
        self.parts.append((np.full(len(rows), j, np.int64), rows, rank, self.file.append(feats)))
        self.n += len(rows)
        if self.n > self.cap + self.slack:
            self._trim()

    def _trim(self):
        j, r, rank, at = (np.concatenate(a) for a in zip(*self.parts))
        best = np.lexsort((r, j, rank))[:self.cap]
        self.parts, self.n = [(j[best], r[best], rank[best], at[best])], len(best)
        if self.n == self.cap:
            self.worst = rank[best[-1]]

    def result(self):
        """(image index, window row, features) of the kept windows, in (image, row) order;
        the pool and its file are closed."""
        try:
            if not self.parts:
                return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, self.dim), np.float16)
            if self.n > self.cap or len(self.parts) > 1:
                self._trim()
            (j, r, _, at), = self.parts
            order = np.lexsort((r, j))
            return j[order], r[order], self.file.read(at[order])
        finally:
            self.close()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file, self.parts = None, []


# ---- 4. SVMs ------------------------------------------------------------------------------------

def _fit_from_pool(det, pool, pos16, C):
    """(w, b, (image, row) of the negatives) of one class's SVM on its positives and the
    negatives kept by `pool`, read back from its scratch file for this fit only."""
    j, r, neg16 = pool.result()
    w, b = _fit(det, pos16, neg16, C)
    return w, b, (j, r)


def train_svms(det, images, conv, log=print, progress=True, scratch=None):
    """One linear SVM per class with hard negative mining, streaming over the images (see the
    module's docstring); sets det.svm_w (K, D), det.svm_b (K,) and det.svm_scale. The
    negatives' features wait in scratch files (in folder `scratch`, a temporary folder when
    None; at most (1.25 x svm_cache_windows + one round's offers) x 8 KB a class on disk),
    and memory holds the positives and one class's cache at a time, when it is fitted."""
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="minispp-svm-") as tmp:
            return train_svms(det, images, conv, log, progress, tmp)
    os.makedirs(scratch, exist_ok=True)
    cfg, K = det.config, len(det.classes)
    cap, n_init = _cache_cap(cfg)
    C = _svm_C(det, len(images))
    D = det.feature_dim if cfg["svm_feature"] == "fc7" else det.pool_dim
    rules = (cfg["svm_neg_iou"], cfg["svm_neg_neg"])
    seed = cfg["seed"] + 1
    pools = {}
    try:
        # pass 1: the positives, the norm sample and the initial random negatives, the only
        # windows whose features it computes (_first_pass_rows)
        init, sample, n_neg = _first_pass_rows(det, images, seed)
        pos = [[] for _ in range(K)]
        pools = {c: _Pool(n_init, D, scratch) for c in range(K)}
        norm_sum, norm_count = 0.0, 0
        for j, im in enumerate(tqdm(images, desc=f"{cfg['svm_feature']} features for the SVMs",
                                    unit="img", disable=not progress)):
            mine = [_rows_of(init[c], j) for c in range(K)]
            in_sample = _rows_of(sample, j)
            need = np.unique(np.concatenate([np.arange(len(im.gt_boxes))] + mine + [in_sample]))
            if need.size == 0:
                continue
            f = _window_features(det, conv, im, need)
            norms = _norms(f[np.searchsorted(need, in_sample)])
            norm_sum, norm_count = norm_sum + float(norms.sum()), norm_count + len(norms)
            gt = f[:len(im.gt_boxes)]                  # the ground-truth boxes come first
            for c in range(K):
                if (im.gt_classes == c).any():
                    pos[c].append(gt[im.gt_classes == c])
                if mine[c].size:
                    pools[c].add(j, mine[c], negative_keys(seed, c, j, mine[c]),
                                 f[np.searchsorted(need, mine[c])])
            del f, gt
        det.svm_scale = _svm_scale(det, norm_sum, norm_count)
        W, b = np.zeros((K, D), np.float32), np.zeros(K, np.float32)
        pos = [np.concatenate(p) if p else np.zeros((0, D), np.float16) for p in pos]
        cache, active = {}, []                  # cache: (image, row) of each class's negatives
        for c in range(K):
            if len(pos[c]) == 0 or n_neg[c] == 0:
                pools.pop(c).close()
                log(f"  {det.classes[c]}: {len(pos[c])} positives, {n_neg[c]} negatives: no SVM")
                W[c], b[c] = 0, -1e3
                continue
            W[c], b[c], cache[c] = _fit_from_pool(det, pools.pop(c), pos[c], C)
            active.append(c)
        # hard negative mining: one pass per round for all classes still finding some
        for rnd in range(cfg["hard_rounds"]):
            if not active:
                break
            pools = {c: _Pool(cap, D, scratch) for c in active}
            found, total = np.zeros(K, np.int64), np.zeros(K, np.int64)
            for j, im in enumerate(tqdm(images, desc=f"hard negatives, round {rnd + 1}", unit="img",
                                        disable=not progress)):
                f = _window_features(det, conv, im)
                s = _scores(f, det.svm_scale, W, b)
                for c in active:
                    negs = svm_negatives(im, c, *rules)
                    total[c] += len(negs)
                    oj, orow = cache[c]
                    lo, hi = np.searchsorted(oj, [j, j + 1])
                    cached = np.isin(negs, orow[lo:hi])
                    hard = (s[negs, c] > cfg["hard_threshold"]) & ~cached
                    found[c] += int(hard.sum())
                    keep = negs[cached | hard]           # the cache and the new hard negatives
                    pools[c].add(j, keep, -s[keep, c].astype(np.float64), f[keep])
                del f, s
            still = []
            for c in active:
                log(_round_line(det, c, rnd, found[c], len(cache[c][0]), total[c], cap))
                if found[c] == 0:
                    pools.pop(c).close()
                    continue
                W[c], b[c], cache[c] = _fit_from_pool(det, pools.pop(c), pos[c], C)
                still.append(c)
            active = still
    finally:
        for pool in pools.values():
            pool.close()
    det.svm_w, det.svm_b = W, b
    return W, b


def train_svms_in_memory(det, images, conv, log=print, progress=True):
    """The reference for train_svms: the same SVMs, trained class by class with every
    window's features of every image in memory (about 16 MB per image at D = 4,096 in
    float16, so for small sets and tests only): the same positives, negatives (0.3 and 0.7
    rules), initial random sample, hard negatives above hard_threshold, cache cap, C and
    solver. Sets det.svm_w, det.svm_b, det.svm_scale."""
    cfg, K = det.config, len(det.classes)
    cap, n_init = _cache_cap(cfg)
    C = _svm_C(det, len(images))
    seed = cfg["seed"] + 1
    feats = [_window_features(det, conv, im)
             for im in tqdm(images, desc=f"{cfg['svm_feature']} features for the SVMs",
                            unit="img", disable=not progress)]
    sample = _norm_sample(images, cfg, seed)     # no need for the geometry of the negatives
    norm_sum, norm_count = 0.0, 0
    for j, f in enumerate(feats):               # summed image by image, as train_svms does
        norms = _norms(f[_rows_of(sample, j)])
        norm_sum, norm_count = norm_sum + float(norms.sum()), norm_count + len(norms)
    det.svm_scale = _svm_scale(det, norm_sum, norm_count)
    D = feats[0].shape[1]
    W, b = np.zeros((K, D), np.float32), np.zeros(K, np.float32)
    for c in range(K):
        pos = np.concatenate([f[:len(im.gt_boxes)][im.gt_classes == c] for f, im in zip(feats, images)])
        negs = [svm_negatives(im, c, cfg["svm_neg_iou"], cfg["svm_neg_neg"]) for im in images]
        neg_index = np.array([(j, r) for j, rows in enumerate(negs) for r in rows],
                             dtype=np.int64).reshape(-1, 2)
        if len(pos) == 0 or len(neg_index) == 0:
            log(f"  {det.classes[c]}: {len(pos)} positives, {len(neg_index)} negatives: no SVM")
            W[c], b[c] = 0, -1e3
            continue
        keys = np.concatenate([negative_keys(seed, c, j, rows) for j, rows in enumerate(negs)])
        cache = np.sort(np.lexsort((neg_index[:, 1], neg_index[:, 0], keys))[:n_init])
        for rnd in range(cfg["hard_rounds"] + 1):
            W[c], b[c] = _fit(det, pos, np.stack([feats[j][r] for j, r in neg_index[cache]]), C)
            if rnd == cfg["hard_rounds"]:
                break
            scores = np.concatenate([_scores(f, det.svm_scale, W, b)[rows, c]
                                     for f, rows in zip(feats, negs)])
            hard = np.setdiff1d(np.flatnonzero(scores > cfg["hard_threshold"]), cache)
            log(_round_line(det, c, rnd, len(hard), len(cache), len(neg_index), cap))
            if hard.size == 0:
                break
            cache = np.union1d(cache, hard)
            if len(cache) > cap:                 # the highest-scoring, ties by (image, row)
                best = np.lexsort((neg_index[cache, 1], neg_index[cache, 0],
                                   -scores[cache].astype(np.float64)))[:cap]
                cache = np.sort(cache[best])
    det.svm_w, det.svm_b = W, b
    return W, b


# ---- 5. box regression --------------------------------------------------------------------------

def _bbox_rows(image, iou):
    """The proposals (rows of image.windows) with IoU >= iou with a ground-truth box, and
    the class of the box each overlaps most."""
    if len(image.gt_boxes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ov, cls = image.max_overlap()
    rows = np.flatnonzero(~image.is_gt & (ov >= iou))
    return rows, cls[rows]


class _RidgeStats:
    """One class's ridge regression data, added image by image: float64 sufficient
    statistics (n, sum x, sum t, X^T X upper triangle, X^T t), or in `kernel` mode its rows
    (float16 features, float64 targets) for the kernel form."""
    CHUNK = 1024                 # rows buffered before a rank-k update of X^T X

    def __init__(self, dim, kernel, folder=None):
        self.dim, self.kernel = dim, kernel
        self.xs, self.ts, self.buffered = [], [], 0
        if kernel:                       # the rows wait in a scratch file until solve
            self.file = _RowFile(folder, dim)
        else:
            self.n, self.sx, self.st = 0, np.zeros(dim), np.zeros(4)
            self.G, self.B = np.zeros((dim, dim), order="F"), np.zeros((dim, 4))

    def add(self, x16, t):
        self.ts.append(t)
        if self.kernel:
            self.file.append(x16)
            return
        self.xs.append(x16)
        self.buffered += len(x16)
        if self.buffered >= self.CHUNK:
            self._flush()

    def close(self):
        """Remove the kernel form's scratch file (done by solve; idempotent)."""
        if self.kernel and self.file is not None:
            self.file.close()
            self.file = None

    KERNEL_CHUNK = 256           # rows read back and worked on in float64 at a time

    def _solve_kernel(self, alpha, scale):
        """The kernel form, w = Xc^T (Xc Xc^T + alpha I)^-1 (t - mean t) with Xc the centred
        rows times scale. The rows are read back from the scratch file `chunk` at a time
        (two blocks of float64 work at once), never all together; the n x n kernel matrix is
        built in Fortran order, upper triangle only, and factorized in place, so the memory is
        8 n^2 bytes (at most 328 MB at n = KERNEL_ROWS x D = 6,400 for ZF-5) and a few blocks."""
        from scipy.linalg import cho_factor, cho_solve
        try:
            t = np.concatenate(self.ts)
            n, chunk = self.file.n, self.KERNEL_CHUNK
            starts = range(0, n, chunk)

            def block(a):
                return self.file.read(np.arange(a, min(a + chunk, n))).astype(np.float64) * scale

            mu = sum(block(a).sum(axis=0) for a in starts) / n
            nu = t.mean(axis=0)
            k = np.empty((n, n), order="F")
            for a in starts:
                xa = block(a) - mu
                for b in starts:
                    if b >= a:               # the upper triangle (and the diagonal blocks)
                        k[a:a + chunk, b:b + chunk] = xa @ (xa if b == a else block(b) - mu).T
            k[np.diag_indices(n)] += alpha
            factor = cho_factor(k, lower=False, overwrite_a=True, check_finite=False)
            beta = cho_solve(factor, t - nu)
            del factor, k
            w = np.zeros((self.dim, 4))
            for a in starts:
                w += (block(a) - mu).T @ beta[a:a + chunk]
        finally:
            self.close()
        return w.T, nu - mu @ w

    def _flush(self):
        from scipy.linalg import blas
        if not self.xs:
            return
        x = np.concatenate(self.xs).astype(np.float64)
        t = np.concatenate(self.ts)
        self.xs, self.ts, self.buffered = [], [], 0
        self.G = blas.dsyrk(1.0, x.T, beta=1.0, c=self.G, trans=0, lower=0, overwrite_c=1)
        self.B += x.T @ t
        self.sx += x.sum(axis=0)
        self.st += t.sum(axis=0)
        self.n += len(x)

    def solve(self, alpha, scale):
        """(coef (4, D), intercept (4,)) of ridge regression with penalty alpha on the
        features times `scale`, the intercept unpenalized (the data centred first)."""
        from scipy.linalg import blas, cho_factor, cho_solve
        if self.kernel:
            return self._solve_kernel(alpha, scale)
        else:
            self._flush()
            n, mu, nu = self.n, self.sx / self.n, self.st / self.n
            G, self.G = self.G, None                 # factorized in place
            G *= scale ** 2                          # (s X - s mu)^T (s X - s mu) + alpha I
            G = blas.dsyr(-n * scale ** 2, mu, lower=0, a=G, overwrite_a=1)
            G.flat[::self.dim + 1] += alpha
            rhs = scale * (self.B - n * np.outer(mu, nu))
            w = cho_solve(cho_factor(G, lower=False, overwrite_a=True, check_finite=False), rhs)
            mu = mu * scale
        return w.T, nu - mu @ w


KERNEL_ROWS = 0.5          # a class with at most this x D rows is solved in the kernel form


def _bbox_groups(counts, dim, budget):
    """Classes (with at least 2 rows) grouped so that the statistics of a group fit in
    `budget` bytes (a class larger than the budget alone); per class its mode (kernel when
    it has at most KERNEL_ROWS x dim rows: its rows wait on disk, 32 bytes of targets a row
    in memory, and are read back when it is solved, one class at a time)."""
    groups, size = [], budget + 1
    kernel = {}
    for c in np.flatnonzero(counts >= 2):
        kernel[c] = counts[c] <= KERNEL_ROWS * dim
        need = 32 * counts[c] if kernel[c] else 8 * dim * (dim + _RidgeStats.CHUNK)
        if size + need > budget or not groups:
            groups.append([])
            size = 0
        groups[-1].append(int(c))
        size += need
    return groups, kernel


def train_box_regressors(det, images, conv, log=print, progress=True, scratch=None):
    """Per class, ridge regression (lambda = bbox_lambda, an unpenalized intercept) from
    pooled conv5 features (float16, scaled to a mean norm of feature_norm over the first
    2,000 rows) to R-CNN's box targets, on proposals with IoU >= bbox_iou with a box of that
    class; streamed as the module's docstring says (kernel-form rows in scratch files in
    folder `scratch`, a temporary folder when None). Sets det.bbox_w (K, 4, D), det.bbox_b
    (K, 4), det.bbox_scale."""
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="minispp-bbox-") as tmp:
            return train_box_regressors(det, images, conv, log, progress, tmp)
    os.makedirs(scratch, exist_ok=True)
    cfg, K, D = det.config, len(det.classes), det.pool_dim
    det.bbox_w, det.bbox_b = np.zeros((K, 4, D), np.float32), np.zeros((K, 4), np.float32)
    counts = np.zeros(K, np.int64)
    for im in images:                                  # geometry only: no features
        counts += np.bincount(_bbox_rows(im, cfg["bbox_iou"])[1], minlength=K)
    if counts.sum() == 0:
        log("box regression: no proposal overlaps a ground-truth box by the threshold")
        return
    groups, kernel = _bbox_groups(counts, D, cfg["bbox_stats_mb"] * 2 ** 20)
    norms = []                                         # of the first 2,000 rows, for the scale
    for g, group in enumerate(groups or [[]]):
        stats = {c: _RidgeStats(D, kernel[c], scratch) for c in group}
        try:
            _box_rows_pass(det, images, conv, group, stats, norms,
                           f"pool5 features for box regression ({g + 1}/{max(len(groups), 1)})", progress)
            if g == 0:
                det.bbox_scale = float(cfg["feature_norm"] / max(np.concatenate(norms).mean(), 1e-6))
            for c in group:
                det.bbox_w[c], det.bbox_b[c] = stats.pop(c).solve(cfg["bbox_lambda"], det.bbox_scale)
        finally:
            for st in stats.values():
                st.close()
    log(f"box regressors trained on {counts.sum()} proposals (IoU >= {cfg['bbox_iou']}), "
        f"{len(groups)} pass(es) over the images")


def _box_rows_pass(det, images, conv, group, stats, norms, desc, progress):
    """One pass over the images: the pooled features and targets of the proposals of the
    classes in `group` into their stats; the norms of the first 2,000 rows into `norms`."""
    cfg = det.config
    for im in tqdm(images, desc=desc, unit="img", disable=not progress):
        n_norms = sum(len(v) for v in norms)
        rows, cls = _bbox_rows(im, cfg["bbox_iou"])
        mine = np.isin(cls, group)
        need = mine | (n_norms < 2000)
        if not need.any():
            continue
        maps, hw = conv.get(im.id, lambda: None)
        x = det.pooler(maps, im.windows[rows[need]], hw).astype(np.float16)
        if n_norms < 2000:
            norms.append(np.linalg.norm(x[:2000 - n_norms].astype(np.float32), axis=1))
        x, r, cl = x[mine[need]], rows[mine], cls[mine]
        if len(r) == 0:
            continue
        t = regression_targets(im.windows[r], im.gt_boxes[im.match[r, cl]])
        for c in np.unique(cl):
            stats[c].add(x[cl == c], t[cl == c])
