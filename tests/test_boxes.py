"""Boxes: overlap, NMS, the regression parameterization, and VOC07 detection AP on cases
computed by hand (difficult objects, duplicates, IoU exactly 0.5)."""
import numpy as np
import pytest

from minispp.detection.boxes import apply_regression, as_boxes, clip, iou, nms, regression_targets
from train.voc_eval import detection_ap


def test_iou_counts_inclusive_pixels():
    # 10x10 boxes shifted by 5: intersection 5x10 = 50, union 150
    assert iou([0, 0, 9, 9], [5, 0, 14, 9])[0, 0] == pytest.approx(1 / 3)
    assert iou([0, 0, 9, 9], [10, 0, 19, 9])[0, 0] == 0.0          # touching, not overlapping
    assert iou([0, 0, 0, 0], [0, 0, 0, 0])[0, 0] == 1.0            # a one-pixel box
    m = iou([[0, 0, 9, 9], [0, 0, 19, 19]], [[0, 0, 9, 9]])
    np.testing.assert_allclose(m[:, 0], [1.0, 0.25])
    with pytest.raises(ValueError, match=r"row 1 is \(5.0, 5.0, 2.0, 8.0\)"):
        as_boxes([[0, 0, 1, 1], [5, 5, 2, 8]])


def test_nms_keeps_the_best_of_each_cluster():
    boxes = [[0, 0, 9, 9], [1, 0, 10, 9], [20, 20, 29, 29], [5, 0, 14, 9]]
    scores = [0.9, 0.8, 0.7, 0.85]
    # IoU with the best box: B 90/110 = 0.82, D 1/3; C apart
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    # at 0.5 D survives (1/3), B falls to A; B vs D is 60/140 = 0.43 but B is gone already
    assert nms(boxes, scores, 0.5).tolist() == [0, 3, 2]
    assert nms(boxes, [0.5, 0.5, 0.5, 0.5], 0.3).tolist() == [0, 2]     # ties: input order
    assert nms(np.zeros((0, 4)), [], 0.3).tolist() == []


def test_regression_targets_by_hand_and_round_trip():
    # P: center (5, 5), 10 x 10. G: center (20, 5), 20 x 10.
    t = regression_targets([[0, 0, 9, 9]], [[10, 0, 29, 9]])
    np.testing.assert_allclose(t, [[1.5, 0.0, np.log(2), 0.0]])
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 300, (50, 4))
    p[:, 2:] = p[:, :2] + rng.uniform(1, 200, (50, 2))
    g = p + rng.normal(0, 5, p.shape)
    g[:, 2:] = np.maximum(g[:, 2:], g[:, :2] + 1)
    np.testing.assert_allclose(apply_regression(p, regression_targets(p, g)), g, atol=1e-9)
    np.testing.assert_allclose(clip([[-5, 3, 700, 90]], 100, 640), [[0, 3, 639, 90]])


def test_detection_ap_by_hand_with_difficult_and_duplicates():
    gt = {"a": (np.array([[0, 0, 9, 9], [50, 50, 59, 59]]), np.array([False, True])),
          "b": (np.array([[0, 0, 19, 19]]), np.array([False])),
          "c": (np.zeros((0, 4)), np.zeros(0, bool))}
    ids = ["a", "a", "a", "b", "b"]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    boxes = [[0, 0, 9, 9],        # TP (G1)
             [0, 0, 9, 9],        # FP: G1 already matched
             [50, 50, 59, 59],    # neither: the difficult box
             [0, 0, 9, 9],        # FP: IoU 0.25 with G3
             [0, 0, 19, 19]]      # TP (G3)
    ap, rec, prec = detection_ap(ids, scores, boxes, gt)
    np.testing.assert_allclose(rec, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1, 0.5, 0.5, 1 / 3, 0.5])
    # t = 0 ... 0.5 (6 points): precision 1; t = 0.6 ... 1 (5 points): 0.5
    assert ap == pytest.approx((6 + 2.5) / 11)
    # the difficult box counted as a plain object would make d2 a TP and npos 3
    gt_plain = dict(gt, a=(gt["a"][0], np.array([False, False])))
    assert detection_ap(ids, scores, boxes, gt_plain)[0] != pytest.approx(ap)
    # a detection on an image without objects of the class is a false positive
    ap2, _, prec2 = detection_ap(["c"] + ids, [1.0] + scores, [[0, 0, 9, 9]] + boxes, gt)
    assert prec2[0] == 0 and ap2 < ap


def test_detection_ap_overlap_exactly_one_half_matches():
    # inter 100, union 200: IoU 0.5 exactly, and the devkit's test is ovmax >= 0.5
    gt = {"x": (np.array([[0, 0, 19, 9]]), np.array([False]))}
    assert detection_ap(["x"], [1.0], [[0, 0, 9, 9]], gt)[0] == pytest.approx(1.0)
    assert detection_ap(["x"], [1.0], [[0, 0, 8, 9]], gt)[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="image 'y'"):
        detection_ap(["y"], [1.0], [[0, 0, 9, 9]], gt)
