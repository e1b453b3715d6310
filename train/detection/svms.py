"""The detector's per-class linear SVMs with hard negative mining and its bounding-box
regressors (paper Sec. 4.1; R-CNN's negative rules and box regression parameterization)."""
import warnings

import numpy as np
from tqdm import tqdm

from minispp.detection.boxes import nms, regression_targets


def svm_negatives(image, c, neg_iou=0.3, neg_neg=0.7):
    """Rows of image.windows that are negatives for class c: proposals with IoU <= neg_iou
    with every ground-truth box of c, dropping any that overlaps an earlier kept negative by
    more than neg_neg (proposals are in rank order)."""
    cand = np.flatnonzero(~image.is_gt & (image.overlap[:, c] <= neg_iou))
    if cand.size == 0:
        return cand
    keep = nms(image.windows[cand], -np.arange(len(cand), dtype=np.float64), neg_neg)
    return np.sort(cand[keep])


def _fit_svm(x, y, C, pos_weight):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = LinearSVC(C=C, loss="hinge", dual=True, class_weight={1: pos_weight, 0: 1.0},
                      intercept_scaling=10.0, max_iter=20000, random_state=0).fit(x, y)
    return m.coef_[0].astype(np.float32), np.float32(m.intercept_[0])


def train_svms(det, images, conv, log=print, progress=True):
    """One linear SVM per class with hard negative mining; sets det.svm_w (K, D), svm_b."""
    cfg, rng = det.config, np.random.default_rng(det.config["seed"] + 1)
    K = len(det.classes)
    feats = []
    for im in tqdm(images, desc=f"{cfg['svm_feature']} features for the SVMs", unit="img",
                   disable=not progress):
        maps, hw = conv.get(im.id, lambda: None)
        pooled, inverse = det.pooler.unique(maps, im.windows, hw)
        f = det.fc7(pooled) if cfg["svm_feature"] == "fc7" else pooled
        feats.append(f.astype(np.float16)[inverse])
    norms = [np.linalg.norm(f.astype(np.float32), axis=1).mean() for f in feats if len(f)]
    det.svm_scale = float(cfg["feature_norm"] / max(np.mean(norms), 1e-6))
    D = feats[0].shape[1]
    W, b = np.zeros((K, D), np.float32), np.zeros(K, np.float32)
    for c in range(K):
        pos = np.concatenate([f[:len(im.gt_boxes)][im.gt_classes == c]      # ground truth rows
                              for f, im in zip(feats, images)]).astype(np.float32) * det.svm_scale
        negs = [(j, svm_negatives(im, c, cfg["svm_neg_iou"], cfg["svm_neg_neg"])) for j, im in enumerate(images)]
        neg_index = np.array([(j, r) for j, rows in negs for r in rows], dtype=np.int64).reshape(-1, 2)
        if len(pos) == 0 or len(neg_index) == 0:
            log(f"  {det.classes[c]}: {len(pos)} positives, {len(neg_index)} negatives: no SVM")
            W[c], b[c] = 0, -1e3
            continue
        cache = rng.permutation(len(neg_index))[:cfg["svm_init_negatives"]]

        def neg_feats(sel):
            return np.stack([feats[j][r] for j, r in neg_index[sel]]).astype(np.float32) * det.svm_scale
        for rnd in range(cfg["hard_rounds"] + 1):
            xn = neg_feats(cache)
            x = np.concatenate([pos, xn])
            y = np.concatenate([np.ones(len(pos)), np.zeros(len(xn))]).astype(np.int64)
            W[c], b[c] = _fit_svm(x, y, cfg["svm_C"], cfg["svm_pos_weight"])
            if rnd == cfg["hard_rounds"]:
                break
            scores = np.concatenate([neg_feats(np.arange(a, min(a + 4096, len(neg_index)))) @ W[c] + b[c]
                                     for a in range(0, len(neg_index), 4096)])
            hard = np.setdiff1d(np.flatnonzero(scores > cfg["hard_threshold"]), cache)
            log(f"  {det.classes[c]}: round {rnd + 1}: {len(hard)} hard negatives added to "
                f"{len(cache)} (of {len(neg_index)})")
            if hard.size == 0:
                break
            cache = np.concatenate([cache, hard])
    det.svm_w, det.svm_b = W, b
    return W, b


# ---- 5. box regression --------------------------------------------------------------------------

def train_box_regressors(det, images, conv, log=print, progress=True):
    """Per class, ridge regression from pooled conv5 features to R-CNN's box targets on
    proposals with IoU >= bbox_iou with a box of that class."""
    from sklearn.linear_model import Ridge
    cfg, K = det.config, len(det.classes)
    xs, ts, cs = [], [], []
    for im in tqdm(images, desc="pool5 features for box regression", unit="img", disable=not progress):
        if len(im.gt_boxes) == 0:
            continue
        ov, cls = im.max_overlap()
        rows = np.flatnonzero(~im.is_gt & (ov >= cfg["bbox_iou"]))
        if rows.size == 0:
            continue
        maps, hw = conv.get(im.id, lambda: None)
        xs.append(det.pooler(maps, im.windows[rows], hw).astype(np.float16))
        gt = im.gt_boxes[im.match[rows, cls[rows]]]
        ts.append(regression_targets(im.windows[rows], gt))
        cs.append(cls[rows])
    D = det.pool_dim
    det.bbox_w, det.bbox_b = np.zeros((K, 4, D), np.float32), np.zeros((K, 4), np.float32)
    if not xs:
        log("box regression: no proposal overlaps a ground-truth box by the threshold")
        return
    x, t, cl = np.concatenate(xs), np.concatenate(ts), np.concatenate(cs)
    det.bbox_scale = float(cfg["feature_norm"] / max(np.linalg.norm(x[:2000].astype(np.float32), axis=1).mean(), 1e-6))
    for c in range(K):
        sel = np.flatnonzero(cl == c)
        if sel.size < 2:
            continue
        r = Ridge(alpha=cfg["bbox_lambda"]).fit(x[sel].astype(np.float32) * det.bbox_scale, t[sel])
        det.bbox_w[c], det.bbox_b[c] = r.coef_, r.intercept_
    log(f"box regressors trained on {len(x)} proposals (IoU >= {cfg['bbox_iou']})")
