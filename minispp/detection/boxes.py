"""Boxes on images: overlap, non-maximum suppression and the bounding-box regression
parameterization (paper Sec. 4.1; R-CNN's appendix C, which SPP-net uses).

One convention everywhere: a box is (x1, y1, x2, y2) in 0-based pixel coordinates,
inclusive, so its width is x2 - x1 + 1 (the VOC devkit's, whose XML is the same plus one).
Arrays of boxes are (N, 4) float64.
"""
import numpy as np
from numba import njit


def as_boxes(boxes, what="boxes"):
    """(N, 4) float64; a box with x2 < x1 or y2 < y1 raises ValueError naming its row."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]) | ~np.isfinite(b).all(axis=1))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"{what}: row {r} is {tuple(float(v) for v in b[r])}, which has x2 < x1, y2 < y1 or a "
                         f"non-finite value")
    return b


def area(boxes):
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def iou(a, b):
    """(len(a), len(b)) intersection over union, the devkit's way (inclusive pixels)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / union


@njit(cache=True)
def _nms(b, order, thresh):
    n = order.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    k = 0
    areas = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    for ii in range(n):
        i = order[ii]
        if suppressed[ii]:
            continue
        keep[k] = i
        k += 1
        for jj in range(ii + 1, n):
            if suppressed[jj]:
                continue
            j = order[jj]
            iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1
            ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1
            if iw <= 0 or ih <= 0:
                continue
            inter = iw * ih
            if inter / (areas[i] + areas[j] - inter) > thresh:
                suppressed[jj] = True
    return keep[:k]


def nms(boxes, scores, thresh=0.3):
    """Indices of the boxes kept by greedy non-maximum suppression, best first: a box is
    dropped when its IoU with a kept, higher-scoring box exceeds thresh (ties in score keep
    the input order)."""
    b = np.ascontiguousarray(as_boxes(boxes))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(scores)} scores")
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    return _nms(b, order, float(thresh))


def _centers(b):
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    return b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h, w, h


def regression_targets(proposals, gt):
    """(N, 4) targets (tx, ty, tw, th) from proposals P to their ground truth G:
    tx = (Gx - Px) / Pw, ty = (Gy - Py) / Ph, tw = log(Gw / Pw), th = log(Gh / Ph),
    with (x, y) the box center and (w, h) its size."""
    px, py, pw, ph = _centers(as_boxes(proposals))
    gx, gy, gw, gh = _centers(as_boxes(gt))
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)


def apply_regression(proposals, deltas):
    """Boxes predicted from proposals and (N, 4) deltas: the inverse of regression_targets."""
    px, py, pw, ph = _centers(as_boxes(proposals))
    d = np.asarray(deltas, dtype=np.float64).reshape(-1, 4)
    cx, cy = px + d[:, 0] * pw, py + d[:, 1] * ph
    w, h = pw * np.exp(d[:, 2]), ph * np.exp(d[:, 3])
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - 1, cy + 0.5 * h - 1], axis=1)


def clip(boxes, height, width):
    """Boxes clipped to an image of (height, width) pixels."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height - 1)
    return b
