"""Testing the detector (paper Sec. 4.2): score every window with the SVMs (or fc8's
softmax), regress its box per class, NMS at IoU 0.3 per class, model combination over the
union of two nets' detections, and VOC07 detection AP."""
import os
import time

import numpy as np
from tqdm import tqdm

from minispp.data.voc import VOCDataset
from minispp.detection.boxes import apply_regression, clip, iou, nms
from minispp.detection.proposals import ProposalCache
from train.detection.calibration import calibrated, choose_members
from train.detection.windows import scale_caches
from train.resources import peak_rss_mb


def score_windows(det, maps, hw, boxes, scorer="svm", bbox=True):
    """(scores (R, K), boxes (R, K, 4)) for proposals of one image. Windows that project onto
    the same conv5 cells share their features, so the fc layers run once per distinct one."""
    pooled, inverse = det.pooler.unique(maps, boxes, hw)
    if scorer == "svm":
        scores = det.svm_features(pooled) @ det.svm_w.T + det.svm_b
    elif scorer == "softmax":
        scores = det.softmax_scores(pooled)[:, 1:]
    elif scorer == "random":          # the chance baseline: same windows, scores drawn at random
        key = int(np.asarray(boxes, np.float64).sum() * 16) % (2 ** 31)
        scores = np.random.default_rng([det.config["seed"], len(boxes), key]).random((len(pooled), len(det.classes)))
    else:
        raise ValueError(f"scorer must be svm, softmax or random, got {scorer!r}")
    scores = scores[inverse]
    K = len(det.classes)
    out = np.repeat(np.asarray(boxes, np.float64)[:, None, :], K, axis=1)
    if bbox and det.bbox_w is not None:
        px = pooled.astype(np.float32) * np.float32(det.bbox_scale)
        for c in range(K):
            d = (px @ det.bbox_w[c].T + det.bbox_b[c])[inverse]
            out[:, c] = clip(apply_regression(boxes, d), hw[0], hw[1])
    return scores, out


def localization(proposals, regressed, gt_boxes, gt_classes, band=(0.5, 0.9)):
    """What box regression does to imperfect windows: for each proposal whose best IoU with a
    ground-truth box lies in band, (IoU before, IoU after regressing it with that box's class's
    regressor). regressed: (R, K, 4) from score_windows."""
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return np.zeros(0), np.zeros(0)
    ov = iou(proposals, gt_boxes)
    j, best = ov.argmax(axis=1), ov.max(axis=1)
    rows = np.flatnonzero((best >= band[0]) & (best < band[1]))
    c = np.asarray(gt_classes)[j[rows]]
    after = iou(regressed[rows, c], gt_boxes)[np.arange(rows.size), j[rows]]
    return best[rows], after


def detections_from_scores(scores, boxes, nms_thresh=0.3, max_per_image=100):
    """Per class: NMS at nms_thresh, at most max_per_image kept. {class: (boxes, scores)}."""
    out = {}
    for c in range(scores.shape[1]):
        keep = nms(boxes[:, c], scores[:, c], nms_thresh)[:max_per_image]
        out[c] = (boxes[keep, c], scores[keep, c])
    return out


def combine(dets, nms_thresh=0.3, max_per_image=100, members=None):
    """Model combination: the union of several detectors' detections of one image, NMS.
    members: per class, -1 for the union of all (the default) or the one detector kept
    (calibration.choose_members)."""
    out = {}
    for c in dets[0]:
        keep_all = members is None or members[c] < 0
        use = dets if keep_all else [dets[int(members[c])]]
        b = np.concatenate([d[c][0] for d in use])
        s = np.concatenate([d[c][1] for d in use])
        keep = nms(b, s, nms_thresh)[:max_per_image]
        out[c] = (b[keep], s[keep])
    return out


def evaluate_detector(det, voc, split="test", workdir=None, scales=None, scorer="svm",
                      limit=None, progress=True, others=(), conv_cache=True, calibrate=True,
                      choose=False):
    """Detect on every image of a split and compute VOC07 AP per class, with and without box
    regression. others: more Detectors for model combination (their detections are pooled
    with this one's before the final NMS; with calibrate and choose, per class the union or
    one detector alone, as their held-out training detections say: choose_members).
    Returns a result dict."""
    from train.voc_eval import detection_ap
    ds = VOCDataset(voc, split)
    if ds.classes != det.classes:
        raise ValueError(f"{voc} {split} has classes {ds.classes}, the detector {det.classes}")
    for k, other in enumerate(others, 1):
        if other.classes != det.classes:
            raise ValueError(f"combined detector {k} has the classes {other.classes}, the first "
                             f"{det.classes}: model combination needs the same classes in order")
    scales = tuple(scales or det.config["scales"])
    workdir = workdir or "."
    props = ProposalCache(os.path.join(workdir, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"])
    convs = [scale_caches(workdir, d.model, scales, d.mean, d.pixel_scale, "" if k == 0 else f"-m{k}",
                          write=conv_cache)
             for k, d in enumerate((det,) + tuple(others))]
    used = [d.use_scales(scales) for d in (det,) + tuple(others)]
    calibrate = bool(others) and scorer == "svm" and calibrate
    if calibrate:
        missing = [k for k, d in enumerate((det,) + tuple(others)) if d.svm_calib is None]
        if missing:
            raise ValueError(f"detector {missing[0]} of the combination has no calibrated SVM scores "
                             f"(trained before calibration existed): run `minispp detect-calibrate "
                             f"--model DETDIR` on it (its caches are reused), or combine raw scores")
    members, chosen = None, None
    if calibrate and choose:
        chosen = choose_members((det,) + tuple(others), det.config["nms"], det.config["max_per_image"])
        if chosen is None:
            print("warning: no held-out training detections shared by the detectors (calibrated "
                  "in-sample, or trained on other images): the union is kept for every class")
        else:
            members = chosen[0]
    n = len(ds) if limit is None else min(limit, len(ds))
    with tqdm(total=n, desc=f"proposals ({split})", unit="img", disable=not progress) as bar:
        props.fill(ds.ids[:n], [ds.image_path(i) for i in range(n)], progress=bar.update)
    K = len(det.classes)
    found = {True: [[] for _ in range(K)], False: [[] for _ in range(K)]}
    gt = [{} for _ in range(K)]
    t_total, moved = 0.0, []
    for i in tqdm(range(n), desc=f"detect ({split}, scales {','.join(map(str, scales))})", unit="img",
                  disable=not progress):
        load = (lambda i=i: ds.load(i)[0])
        boxes, cls, diff = ds.object_boxes(i)
        for c in range(K):
            gt[c][ds.ids[i]] = (boxes[cls == c], diff[cls == c])
        p = props.get(ds.ids[i], load)
        t0 = time.perf_counter()
        scored = []                       # per model: (scores, regressed boxes, plain boxes)
        for d, conv in zip((det,) + tuple(others), convs):
            maps, hw = conv.get(ds.ids[i], load)
            scores, b = score_windows(d, maps, hw, p, scorer, bbox=True)
            if calibrate:
                scores = calibrated(scores, d.svm_calib)
            scored.append((d, scores, b, np.repeat(np.asarray(p, np.float64)[:, None], K, axis=1)))
        moved.append(localization(p, scored[0][2], boxes[~diff], cls[~diff]))
        for use_bbox in (True, False):
            per_model = [detections_from_scores(sc, rb if use_bbox else pb, d.config["nms"],
                                                d.config["max_per_image"]) for d, sc, rb, pb in scored]
            dets = per_model[0] if len(per_model) == 1 else combine(
                per_model, det.config["nms"], det.config["max_per_image"], members)
            for c, (bb, ss) in dets.items():
                found[use_bbox][c].append((ds.ids[i], bb, ss))
        t_total += time.perf_counter() - t0
    result = {"split": split, "images": n, "scales": list(scales), "scorer": scorer,
              "models": 1 + len(others), "calibrated": calibrate, "svms_trained_at": used,
              "seconds_per_image_scoring": t_total / max(n, 1), "peak_rss_mb": peak_rss_mb()}
    if chosen is not None:
        names = ["union"] + [f"model {m}" for m in range(1 + len(others))]
        result["members"] = {
            "held_out_training_images": chosen[2],
            "per_class": {det.classes[c]: names[int(chosen[0][c]) + 1] for c in range(K)},
            "held_out_ap": {det.classes[c]: dict(zip(names, [None if not np.isfinite(v) else float(v)
                                                             for v in chosen[1][c]]))
                            for c in range(K)}}
    before, after = (np.concatenate([m[k] for m in moved]) for k in (0, 1))
    result["localization"] = {"windows": int(before.size),
                              "mean_iou_before": float(before.mean()) if before.size else float("nan"),
                              "mean_iou_after": float(after.mean()) if after.size else float("nan")}
    for use_bbox in (True, False):
        aps = {}
        for c in range(K):
            ids = [k for k, bb, _ in found[use_bbox][c] for _ in range(len(bb))]
            if not any((~d).any() for _, d in gt[c].values()):
                continue
            bb = np.concatenate([bb for _, bb, _ in found[use_bbox][c]]) if ids else np.zeros((0, 4))
            ss = np.concatenate([ss for _, _, ss in found[use_bbox][c]]) if ids else np.zeros(0)
            aps[det.classes[c]] = detection_ap(ids, ss, bb, gt[c])[0]
        key = "bbox" if use_bbox else "no_bbox"
        result[key] = {"per_class": aps, "mAP": float(np.mean(list(aps.values()))) if aps else float("nan")}
    return result


def detect_image(det, img, scales):
    """Detection on one image, as `minispp detect` runs it: selective search, conv5 at each
    scale, every window scored and regressed, NMS per class. Returns (boxes, scores,
    regressed, detections, maps); a ValueError when the image has no window."""
    from minispp.detection.selective_search import selective_search

    from train.detection.windows import conv5_maps
    boxes = selective_search(img, seed=det.config["seed"], top=det.config["proposals"])
    if len(boxes) == 0:
        raise ValueError(f"selective search found no window in this {img.shape[1]} x "
                         f"{img.shape[0]} image")
    maps = conv5_maps(det.model, img, scales, det.mean, det.pixel_scale)
    scores, regressed = score_windows(det, maps, img.shape[:2], boxes)
    dets = detections_from_scores(scores, regressed, det.config["nms"], det.config["max_per_image"])
    return boxes, scores, regressed, dets, maps
