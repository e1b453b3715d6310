"""Average precision as the VOC 2007 devkit computes it (paper Sec. 3.2, 4.2).

The devkit ranks by decreasing confidence (ties keep the file's order: a stable sort),
accumulates true and false positives down the ranking, and for VOC 2007 averages the
interpolated precision at the 11 recalls 0, 0.1, ..., 1:

    AP = 1/11 * sum over t of  max(precision at ranks where recall >= t)   (0 if none)

The thresholds are compared in floating point as the devkit's MATLAB does: `0:0.1:1` is
built from both ends (the first half as k * 0.1, the second as 1 - k * 0.1), which makes
the 4th threshold 0.1 * 3 = 0.30000000000000004 and every other one the double nearest
k / 10. So a recall of exactly 3/10 (or 6/20, ...) does not reach the 0.3 point, as in the
devkit, while 7/10 reaches 0.7.

Classification (VOCevalcls): an image is a true positive for a class if its label is 1, a
false positive if -1; images labelled 0 ("difficult only") count as neither, so they are
ignored, and recall is over the images labelled 1.
"""
import numpy as np


def matlab_colon(base, step, limit):
    """MATLAB's base:step:limit in floating point: first half base + k*step, second half
    limit - k*step, the middle (for an even count) (base + limit) / 2."""
    n = int(np.floor((limit - base) / step + 1e-10))
    out = np.empty(n + 1)
    for k in range(n // 2 + 1):
        out[k] = base + k * step
        out[n - k] = limit - k * step
    if n % 2 == 0:
        out[n // 2] = (base + limit) / 2
    return out


THRESHOLDS = matlab_colon(0.0, 0.1, 1.0)      # the devkit's 11 recall points


def voc07_ap(recall, precision):
    """The 11-point interpolated AP of a precision/recall curve (arrays down the ranking)."""
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    ap = 0.0
    for t in THRESHOLDS:
        above = precision[recall >= t]
        ap += (above.max() if above.size else 0.0) / 11
    return float(ap)


def classification_ap(scores, labels):
    """AP of one class: scores (N,) confidences, labels (N,) in {1, 0, -1}. A class with no
    positive image has no AP (ValueError)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores for {labels.shape[0]} labels")
    bad = ~np.isin(labels, (1, 0, -1))
    if bad.any():
        raise ValueError(f"labels must be 1, 0 or -1; row {int(np.flatnonzero(bad)[0])} is "
                         f"{labels[bad][0]}")
    npos = int((labels == 1).sum())
    if npos == 0:
        raise ValueError("no positive image: AP is undefined")
    order = np.argsort(-scores, kind="stable")
    gt = labels[order]
    tp = np.cumsum(gt > 0)
    fp = np.cumsum(gt < 0)
    recall = tp / npos
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    return voc07_ap(recall, precision)


def classification_map(scores, labels, classes):
    """{'per_class': {class: AP}, 'mAP': mean} over the classes of (N, K) scores/labels;
    classes without a positive are left out of the mean and listed under 'no_positives'."""
    per, empty = {}, []
    for k, c in enumerate(classes):
        if (np.asarray(labels)[:, k] == 1).any():
            per[c] = classification_ap(scores[:, k], labels[:, k])
        else:
            empty.append(c)
    return {"per_class": per, "mAP": float(np.mean(list(per.values()))) if per else float("nan"),
            "no_positives": empty}


def detection_ap(image_ids, scores, boxes, ground_truth, min_overlap=0.5):
    """AP of one class's detections, as the devkit's VOCevaldet computes it.

    image_ids (D,), scores (D,), boxes (D, 4): the detections (0-based inclusive pixels).
    ground_truth: {image id: (boxes (M, 4), difficult (M,) bool)} of this class, for every
    test image (an image may have none). Detections are taken by decreasing score (ties in
    input order). Each is matched to the ground truth box it overlaps most in its image; at
    IoU >= min_overlap (the devkit's `ovmax >= minoverlap`) it is a true positive if that box
    is not yet matched, a false positive if it is (a duplicate), and neither when that box is
    `difficult`; below min_overlap it is a false positive. Recall is over the non-difficult
    boxes. Returns (ap, recall, precision)."""
    from minispp.detection.boxes import iou
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    image_ids = list(image_ids)
    if not (len(image_ids) == len(scores) == len(boxes)):
        raise ValueError(f"{len(image_ids)} image ids, {len(scores)} scores, {len(boxes)} boxes")
    npos = int(sum((~np.asarray(d, bool)).sum() for _, d in ground_truth.values()))
    matched = {k: np.zeros(len(d), dtype=bool) for k, (_, d) in ground_truth.items()}
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for r, d in enumerate(order):
        key = image_ids[d]
        if key not in ground_truth:
            raise ValueError(f"detection {d} is on image {key!r}, which is not in the ground truth")
        gt_boxes, difficult = ground_truth[key]
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        if len(gt_boxes) == 0:
            fp[r] = 1
            continue
        ov = iou(boxes[d:d + 1], gt_boxes)[0]
        j = int(np.argmax(ov))                      # the first of equal overlaps
        if ov[j] >= min_overlap:
            if difficult[j]:
                continue
            if not matched[key][j]:
                tp[r] = 1
                matched[key][j] = True
            else:
                fp[r] = 1
        else:
            fp[r] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos else np.zeros_like(tp)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    return voc07_ap(recall, precision), recall, precision
