"""Calibrated SVM scores for model combination (paper Sec. 4.2, "Model Combination").

Two detectors' SVM scores live on scales of their own (each SVM's margin, its features'
norm, its C), so the union of their detections before NMS lets the detector with the larger
scores win every overlap, right or wrong. Each detector's scores are therefore mapped, per
class, to the probability that a window is a true detection, by Platt scaling fitted on its
training images only (never on test data):

    p(true | s) = 1 / (1 + exp(-(a s + b)))

A window of a training image counts as true for class c when its IoU with a ground-truth
box of c is at least 0.5, the VOC rule for a correct detection; every other window of the
image is false. The detections are merged by the log-odds a s + b (``calibrated``), which
order windows as the probabilities do without rounding to 1.0 where the fit is steep. The
map is increasing, so a detector alone ranks its windows exactly as before and its AP does
not change; only the merging of two detectors does.

The scores are out-of-fold (``calib_folds`` = k >= 2, default 2), as Platt (1999) and
libsvm's probability estimates fit them: the training images are split into k seeded folds,
SVMs are trained (hard negatives included) on all folds but one, and the windows of the
held-out fold are scored by them; the sigmoid is fitted to all folds' held-out scores and
then applied to the final SVMs, trained on every image. An SVM scores its own training
windows far more confidently than new ones: fitted in-sample (``calib_folds`` = 1) the
slopes reach the hundreds, a weak detector's false positives look as sure as a strong
one's true detections, and the union is worse than the better detector alone (README,
"Model combination"). The fold SVMs see (k - 1) / k of the images and take the C that
svm_C_for gives that many images (C x n / n_fold), so their margins are those of the final
SVMs; k = 2 costs one more SVM training in all (two trainings on half the images).

The held-out detections are kept too (``svm_oof_*``: per held-out image and class, the top
``calib_dets`` proposals after NMS, with their out-of-fold scores and the image's ground
truth), so that a combination can be judged on training data before it is used:
``choose_members`` computes, per class, the AP on the images the detectors share of the
union of their calibrated detections and of each detector alone, and keeps the best (the
union on ties). It is `detect-test --choose-per-class`, not the default: calibration alone
already kept the union of a strong and a 17-point weaker detector at the strong one's mAP,
and the choice, made on few held-out images, traded one class's gain away (README, "Model
combination").

Memory and time are bounded: the scores of at most ``calib_images`` training images (a
seeded sample) are used, all their true windows and up to ``calib_negatives`` false ones per
class (the smallest hash keys: a uniform sample, each kept false window weighted by total /
kept), and scoring them costs what one hard-negative round costs on those images.
"""
import copy
import hashlib

import numpy as np
from scipy.special import expit
from tqdm import tqdm

from minispp.detection.boxes import nms
from train.detection.svms import _scores, _svm_C, _window_features, negative_keys, train_svms


MIN_SLOPE = 1e-9


def platt_fit(scores, labels, weights=None, iterations=100):
    """(a, b) of the sigmoid 1 / (1 + exp(-(a s + b))) that maximises the weighted likelihood
    of labels (1 true, 0 false) with Platt's smoothed targets (N+ + 1) / (N+ + 2) and
    1 / (N- + 2), which keep a and b finite when the classes separate. Newton's method on the
    two parameters, with step halving. The map is kept increasing: where the best slope is
    below MIN_SLOPE (held-out scores that do not rise with the truth: a weak SVM), a is
    MIN_SLOPE and b the log prior odds, so the detector's windows all sit at the prior in a
    combination and keep their order among themselves."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64).ravel()
    n_pos, n_neg = w[y].sum(), w[~y].sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"Platt scaling needs true and false windows; got {n_pos:g} true and "
                         f"{n_neg:g} false")
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    theta = np.array([0.0, np.log((n_pos + 1) / (n_neg + 1))])    # a = 0: the prior

    def loss(th):
        z = th[0] * s + th[1]                       # -log likelihood, stable for any z
        return float(np.sum(w * (np.logaddexp(0, z) - t * z)))
    current = loss(theta)
    for _ in range(iterations):
        p = expit(theta[0] * s + theta[1])
        g = np.array([np.sum(w * (p - t) * s), np.sum(w * (p - t))])
        h = w * p * (1 - p)
        H = np.array([[np.sum(h * s * s), np.sum(h * s)], [np.sum(h * s), np.sum(h)]])
        H += 1e-12 * np.eye(2)
        step = np.linalg.solve(H, g)
        for _ in range(30):
            trial = theta - step
            new = loss(trial)
            if new <= current:
                break
            step /= 2
        else:
            break
        done = abs(current - new) <= 1e-12 * max(1.0, abs(current))
        theta, current = trial, new
        if done:
            break
    if theta[0] < MIN_SLOPE:
        # the scores say nothing of the labels, or the opposite: every window gets the prior
        # (the best b with a = 0), and a slope small enough to keep the detector's ranking
        # without moving any window off the prior by more than rounding
        p_true = np.sum(w * t) / np.sum(w)
        return MIN_SLOPE, float(np.log(p_true / (1 - p_true)))
    return float(theta[0]), float(theta[1])


def calibrated(scores, calib):
    """(R, K) calibrated scores from (R, K) SVM scores and calib (K, 2) rows (a, b): the
    log-odds a s + b of a true detection. They order windows as the probabilities
    1 / (1 + exp(-(a s + b))) do, but do not round to exactly 1.0 where the fit is steep (SVMs
    fitted to their own training windows separate them well, and a reaches the hundreds), so
    the ranking within a detector is kept exactly."""
    calib = np.asarray(calib, np.float64)
    return np.asarray(scores, np.float64) * calib[:, 0] + calib[:, 1]


def calibration_folds(n_images, folds, seed):
    """(n_images,) fold of each training image, 0..folds-1, a seeded balanced split (all 0
    when folds <= 1: in-sample)."""
    if folds <= 1:
        return np.zeros(n_images, np.int64)
    order = np.random.default_rng([int(seed), 11]).permutation(n_images)
    fold = np.empty(n_images, np.int64)
    fold[order] = np.arange(n_images) % int(folds)
    return fold


def fold_detector(det, n_all, n_fold):
    """A shallow copy of det whose SVMs can be trained without touching det's: the same
    trunk, head and pooler, a config of its own with the C for n_fold images (C x n_all /
    n_fold, the balance of loss and regularization svm_C_for keeps)."""
    other = copy.copy(det)
    other.config = dict(det.config, svm_C=_svm_C(det, n_all) * n_all / max(n_fold, 1))
    return other


def calibrate_svms(det, images, conv, log=print, progress=True, scratch=None):
    """Fit det.svm_calib (K, 2) float64 on the training images (the module's docstring);
    det.svm_w and det.svm_b must be the final SVMs (trained on `images`). With calib_folds
    k >= 2 the scores are out-of-fold: k more SVM trainings (train_svms, scratch files in
    `scratch`) on all folds but one. Classes without true or false windows get a = 1, b = 0;
    a fold whose training images hold no object of a class gives that class no scores."""
    cfg, K = det.config, len(det.classes)
    rng = np.random.default_rng([cfg["seed"], 7])
    pick = np.sort(rng.permutation(len(images))[:cfg["calib_images"]])
    folds = int(cfg.get("calib_folds", 1))
    fold = calibration_folds(len(images), folds, cfg["seed"])
    cap = int(cfg["calib_negatives"])
    true_s = [[] for _ in range(K)]
    false_s = [[] for _ in range(K)]           # (keys, scores) parts, trimmed to cap by key
    n_false = np.zeros(K, np.int64)
    oof_ids, oof_dets, oof_gt = [], [], []      # held-out detections, for choose_members
    for k in range(max(folds, 1)):
        mine = pick[fold[pick] == k]
        if mine.size == 0:
            continue
        if folds <= 1:
            scorer, has_pos = det, np.ones(K, bool)
        else:
            train = [im for i, im in enumerate(images) if fold[i] != k]
            scorer = fold_detector(det, len(images), len(train))
            has_pos = np.zeros(K, bool)
            for im in train:
                has_pos[np.unique(im.gt_classes)] = True
            log(f"  calibration fold {k + 1} of {folds}: SVMs on the other {len(train)} images "
                f"(C = {scorer.config['svm_C']:.4g}), scoring {mine.size} held-out images")
            train_svms(scorer, train, conv, lambda m: log("  " + m), progress, scratch)
        for j in tqdm(mine, desc=f"SVM scores for calibration ({k + 1}/{max(folds, 1)})",
                      unit="img", disable=not progress):
            im = images[j]
            s = _scores(_window_features(det, conv, im), scorer.svm_scale, scorer.svm_w, scorer.svm_b)
            if folds > 1:
                n = len(oof_ids)
                oof_ids.append(image_key(im.id))
                oof_gt.append(np.column_stack([np.full(len(im.gt_boxes), n), im.gt_classes, im.gt_boxes]))
                oof_dets.append(_held_out_detections(im, s, has_pos, n, cfg))
            for c in np.flatnonzero(has_pos):
                true = im.class_overlap(c) >= cfg["pos_iou"]
                true_s[c].append(s[true, c])
                rows = np.flatnonzero(~true)
                n_false[c] += rows.size
                false_s[c].append((negative_keys(cfg["seed"] + 2, c, int(j), rows), s[rows, c]))
                if sum(len(k_) for k_, _ in false_s[c]) > 2 * cap:
                    false_s[c] = [_smallest_keys(false_s[c], cap)]
    calib = np.tile([1.0, 0.0], (K, 1))
    for c in range(K):
        pos = np.concatenate(true_s[c]) if true_s[c] else np.zeros(0)
        _, neg = _smallest_keys(false_s[c], cap) if false_s[c] else (None, np.zeros(0))
        if len(pos) == 0 or len(neg) == 0:
            log(f"  {det.classes[c]}: {len(pos)} true and {len(neg)} false windows: not calibrated")
            continue
        weights = np.concatenate([np.ones(len(pos)), np.full(len(neg), n_false[c] / len(neg))])
        calib[c] = platt_fit(np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                             weights)
    det.svm_calib = calib
    if folds > 1:
        det.svm_oof_images = np.array(oof_ids, np.int64)
        det.svm_oof_dets = np.concatenate(oof_dets).astype(np.float32) if oof_dets else np.zeros((0, 7), np.float32)
        det.svm_oof_gt = np.concatenate(oof_gt).astype(np.float32) if oof_gt else np.zeros((0, 6), np.float32)
    else:
        det.svm_oof_images = det.svm_oof_dets = det.svm_oof_gt = None
    how = f"out-of-fold, {folds} folds" if folds > 1 else "in-sample"
    log(f"SVM scores calibrated (Platt, {how}) on {len(pick)} training images: a = "
        f"{', '.join(f'{a:.2f}' for a in calib[:, 0])}")
    return calib


def image_key(image_id):
    """A 63-bit key of an image id (blake2b), by which two detectors' held-out images are
    matched without storing strings in the detector file."""
    return int.from_bytes(hashlib.blake2b(str(image_id).encode(), digest_size=8).digest(), "little") >> 1


def _held_out_detections(im, s, has_pos, n, cfg):
    """(M, 7) rows (image n, class, x1, y1, x2, y2, score) of one held-out image: per class
    with an SVM, its proposals (the ground-truth windows left out) after NMS at cfg["nms"],
    the top cfg["calib_dets"] by out-of-fold score, as testing keeps them."""
    prop = np.flatnonzero(~im.is_gt)
    rows = []
    for c in np.flatnonzero(has_pos):
        keep = prop[nms(im.windows[prop], s[prop, c], cfg["nms"])[:int(cfg["calib_dets"])]]
        rows.append(np.column_stack([np.full(len(keep), n), np.full(len(keep), c),
                                     im.windows[keep], s[keep, c]]))
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def choose_members(dets, nms_thresh=0.3, max_per_image=100):
    """Per class, which of the detectors `dets` a combination keeps: -1 for the union of
    all, m for detector m alone, whichever gives the highest AP (VOC07) on the held-out
    detections (svm_oof_*) of the training images every detector holds, each detector's
    scores calibrated by its svm_calib (the module's docstring); the union on ties. Returns
    (choice (K,) int, ap (K, 1 + M) with the union's first, images shared), or None when a
    detector has no held-out detections (calibrated in-sample) or they share no image."""
    from train.detection.testing import combine
    from train.voc_eval import detection_ap
    if any(getattr(d, "svm_oof_images", None) is None for d in dets):
        return None
    shared = set(int(v) for v in dets[0].svm_oof_images)
    for d in dets[1:]:
        shared &= set(int(v) for v in d.svm_oof_images)
    if not shared:
        return None
    keys = sorted(shared)
    K = len(dets[0].classes)
    per = []                                  # per detector: {key: {class: (boxes, scores)}}
    for d in dets:
        rows = np.asarray(d.svm_oof_dets, np.float64)
        key_of = np.asarray(d.svm_oof_images, np.int64)[rows[:, 0].astype(np.int64)]
        cls = rows[:, 1].astype(np.int64)
        z = rows[:, 6] * d.svm_calib[cls, 0] + d.svm_calib[cls, 1]      # calibrated(), row by row
        out = {}
        for key in keys:
            mine = key_of == key
            out[key] = {c: (rows[mine & (cls == c), 2:6], z[mine & (cls == c)]) for c in range(K)}
        per.append(out)
    g = np.asarray(dets[0].svm_oof_gt, np.float64)
    g_key = np.asarray(dets[0].svm_oof_images, np.int64)[g[:, 0].astype(np.int64)]
    union = {key: combine([p[key] for p in per], nms_thresh, max_per_image) for key in keys}
    ap = np.full((K, 1 + len(dets)), np.nan)
    for c in range(K):
        truth = {key: (g[(g_key == key) & (g[:, 1] == c), 2:6],
                       np.zeros(int(((g_key == key) & (g[:, 1] == c)).sum()), bool)) for key in keys}
        if not any(len(b) for b, _ in truth.values()):
            continue
        options = [{key: union[key][c] for key in keys}]
        options += [{key: p[key][c] for key in keys} for p in per]
        for o, found in enumerate(options):
            ids = [key for key in keys for _ in range(len(found[key][1]))]
            ap[c, o] = detection_ap(ids, np.concatenate([found[key][1] for key in keys]),
                                    np.concatenate([found[key][0] for key in keys]).reshape(-1, 4),
                                    truth)[0]
    choice = np.full(K, -1, np.int64)
    for c in range(K):
        if np.isfinite(ap[c]).all() and ap[c, 1:].max() > ap[c, 0]:
            choice[c] = int(np.argmax(ap[c, 1:]))
    return choice, ap, len(keys)


def _smallest_keys(parts, cap):
    keys = np.concatenate([k for k, _ in parts])
    vals = np.concatenate([v for _, v in parts])
    if len(keys) > cap:
        keep = np.argpartition(keys, cap - 1)[:cap]
        keys, vals = keys[keep], vals[keep]
    return keys, vals
