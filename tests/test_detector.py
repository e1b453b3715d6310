"""The detector's parts: scale choice, the SVM negative rules, the R-CNN crop, the conv5 cache
(resume after a kill, refusal), and the whole path on the small net through the commands."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import nets
from tests.helpers import save_small
from minispp.data.embedded import make_voc
from minispp.storage.feature_cache import CacheMismatch
from minispp.detection.proposals import ProposalCache
from minispp.data.voc import VOCDataset
from train.cli import main
from train.detection.detector import load_detector
from train.detection.svms import svm_negatives
from train.detection.testing import combine, localization, score_windows
from train.detection.timing import rcnn_crop
from train.detection.windows import ConvCache, ImageWindows, WindowPooler, choose_scales

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("detvoc") / "voc", seed=1, trainval=6, test=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_small(tmp_path_factory.mktemp("detck") / "small.h5")


def test_each_window_goes_to_the_scale_nearest_224_squared():
    hw = (400, 500)                          # factors 480/400 = 1.2 and 688/400 = 1.72
    # 100 x 100: areas 14,400 and 29,584 scaled -> 688 is nearer 50,176
    # 300 x 300: 129,600 and 266,256 -> 480
    got = choose_scales([[0, 0, 99, 99], [0, 0, 299, 299]], hw, (480, 688))
    assert got.tolist() == [1, 0]
    five = (480, 576, 688, 864, 1200)
    tiny = choose_scales([[0, 0, 19, 19]], hw, five)
    assert five[int(tiny[0])] == 1200


def test_svm_negatives_follow_the_iou_rules():
    gt = np.array([[0, 0, 99, 99]], float)
    props = np.array([[0, 0, 99, 79],        # IoU 0.8: not a negative
                      [50, 50, 149, 149],    # IoU 2500/17500 = 0.14: negative
                      [51, 50, 150, 149],    # overlaps the previous one by 0.98: dropped
                      [300, 300, 399, 399],  # far away: negative
                      [0, 0, 99, 49]], float)  # IoU 0.5: above 0.3, not a negative
    im = ImageWindows("x", (400, 400), gt, [0], props, 2)
    assert im.overlap[1:, 0].round(2).tolist() == [0.8, 0.14, 0.14, 0.0, 0.5]
    # rows are windows: the ground truth first, then the proposals
    assert svm_negatives(im, 0).tolist() == [2, 4]
    assert svm_negatives(im, 0, neg_neg=1.0).tolist() == [2, 3, 4]
    # class 1 has no box: every proposal is a negative, minus the 0.7 neighbours
    # (the last, IoU 5000/8000 = 0.625 with the first, stays)
    assert svm_negatives(im, 1).tolist() == [1, 2, 4, 5]


def test_model_combination_is_nms_over_the_union():
    a = {0: (np.array([[0, 0, 99, 99], [200, 200, 299, 299]], float), np.array([0.9, 0.4])),
         1: (np.zeros((0, 4)), np.zeros(0))}
    b = {0: (np.array([[2, 2, 101, 101], [400, 0, 449, 49]], float), np.array([0.95, 0.1])),
         1: (np.array([[10, 10, 50, 50]], float), np.array([0.3]))}
    got = combine([a, b], nms_thresh=0.3)
    # class 0: b's box (0.95) suppresses a's nearly identical one (0.9); the other two stay
    np.testing.assert_array_equal(got[0][0], [[2, 2, 101, 101], [200, 200, 299, 299], [400, 0, 449, 49]])
    np.testing.assert_array_equal(got[0][1], [0.95, 0.4, 0.1])
    np.testing.assert_array_equal(got[1][0], [[10, 10, 50, 50]])
    assert len(combine([a, b], max_per_image=2)[0][1]) == 2


def test_pictures_show_detections_above_the_threshold_and_the_top_ones():
    from train.detection.drawing import draw_detections, shown_detections
    dets = {0: (np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float), np.array([0.5, -0.7])),
            1: (np.array([[40, 40, 59, 59]], float), np.array([-0.2]))}
    assert [(c, s) for c, _, s in shown_detections(dets)] == [(0, 0.5)]
    assert [(c, s) for c, _, s in shown_detections(dets, top=2)] == [(0, 0.5), (1, -0.2)]
    assert [(c, s) for c, _, s in shown_detections(dets, threshold=-1)] == [(0, 0.5), (1, -0.2), (0, -0.7)]
    img = np.zeros((64, 64, 3), np.uint8)
    drawn = np.asarray(draw_detections(img, dets, ["a", "b"], top=2))
    assert drawn[50, 40].any() and not drawn[25, 20].any()     # box 1 drawn, box 2 (-0.7) not


def test_localization_measures_regression_on_imperfect_windows():
    gt, cls = np.array([[0, 0, 99, 99], [200, 200, 299, 299]], float), np.array([1, 0])
    props = np.array([[0, 0, 99, 79],         # IoU 0.8 with gt 0 (class 1): counted
                      [0, 0, 99, 98],         # IoU 0.99: already good, not counted
                      [0, 0, 99, 29],         # IoU 0.3: not counted
                      [200, 200, 299, 249]],  # IoU 0.5 with gt 1 (class 0): counted
                     float)
    regressed = np.repeat(props[:, None], 2, axis=1)
    regressed[0, 1] = gt[0]                   # class 1's regressor fixes window 0 exactly
    regressed[0, 0] = [0, 0, 9, 9]            # (class 0's is not the one that counts)
    regressed[3, 0] = [200, 200, 299, 274]    # IoU 0.5 -> 0.75
    before, after = localization(props, regressed, gt, cls)
    np.testing.assert_allclose(before, [0.8, 0.5])
    np.testing.assert_allclose(after, [1.0, 0.75])
    assert localization(props, regressed, np.zeros((0, 4)), [])[0].size == 0


def test_rcnn_crop_keeps_16_pixels_of_context():
    img = np.zeros((300, 300, 3), np.uint8)
    img[100:200, 100:200] = 255
    x = rcnn_crop(img, [100, 100, 199, 199], 0.0, 1.0)
    assert x.shape == (3, 224, 224)
    assert x[:, 20:204, 20:204].min() > 250            # the box fills the middle 192 x 192
    assert x[:, :, :14].max() < 5 and x[:, :14, :].max() < 5    # 16 px of its surroundings
    edge = rcnn_crop(img, [0, 0, 49, 49], 0.0, 1.0)   # context off the image is the mean
    assert edge.shape == (3, 224, 224) and edge[:, :10, :10].max() == 0


SLOW_CONV = """
import sys, time
import numpy as np, nets
from minispp.data.voc import VOCDataset
from train.detection.windows import ConvCache
ckpt, voc, folder = sys.argv[1:4]
m = nets.load(ckpt)
mean, sc = m.input_normalization()
cache = ConvCache(folder, m, (64, 96), mean, sc)
ds = VOCDataset(voc, "trainval")
for i in range(len(ds)):
    cache.get(ds.ids[i], lambda: ds.load(i)[0])
    time.sleep(0.4)
"""


def test_conv_cache_resumes_after_a_kill_and_refuses_another_model(ckpt, voc, tmp_path):
    folder = str(tmp_path / "conv")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONV, ckpt, str(voc), folder], env=env)
    try:
        deadline = time.time() + 120
        while len(glob.glob(folder + "/0*.h5")) < 2:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = sorted(glob.glob(folder + "/0*.h5"))
    assert 2 <= len(done) < 6
    for p in done:
        with h5py.File(p, "r") as f:
            assert set(f["conv5"]) == {"64", "96"}
    model = nets.load(ckpt)
    mean, sc = model.input_normalization()
    ds = VOCDataset(voc, "trainval")
    cache = ConvCache(folder, model, (64, 96), mean, sc)
    fresh = ConvCache(str(tmp_path / "fresh"), model, (64, 96), mean, sc)
    for i in range(len(ds)):
        a, hw = cache.get(ds.ids[i], lambda: ds.load(i)[0])
        b, hw2 = fresh.get(ds.ids[i], lambda: ds.load(i)[0])
        assert hw == hw2 == ds.load(i)[0].shape[:2]
        for s in (64, 96):
            np.testing.assert_array_equal(a[s], b[s])
    with pytest.raises(CacheMismatch, match="scales"):
        ConvCache(folder, model, (64,), mean, sc)
    other = nets.load(save_small(tmp_path / "other.h5", seed=5))
    with pytest.raises(CacheMismatch, match="checkpoint"):
        ConvCache(folder, other, (64, 96), mean, sc)


def _pooler_on_two_scales(ckpt, seed):
    """A WindowPooler of the small net, random conv5 maps at scales 64 and 128 of a 100 x 125
    image (factors 0.64 and 1.28), and pool_alone(m, boxes): one WindowSPP on map m."""
    from layers import WindowSPP
    model = nets.load(ckpt)
    S, offset, _ = model.feature_geometry()
    rng = np.random.default_rng(seed)
    maps = {64: rng.random((1, 5, 16, 20), dtype=np.float32),
            128: rng.random((1, 5, 32, 40), dtype=np.float32)}

    def pool_alone(m, boxes):
        layer = WindowSPP(model.spp, feature_stride=S, offset=offset)
        layer.setup(m.shape)
        return layer.forward(m, boxes, train=False)
    return WindowPooler(model, model.spp), maps, (100, 125), pool_alone


def test_pooler_uses_the_map_of_each_windows_scale(ckpt):
    pool, maps, hw, pool_alone = _pooler_on_two_scales(ckpt, 0)
    boxes = np.array([[0, 0, 99, 99], [10, 10, 29, 29]], float)
    got = pool(maps, boxes, hw)
    # the big box is nearest 224^2 at 128... both are below it: each goes to 128
    np.testing.assert_array_equal(got, pool_alone(maps[128], boxes * 1.28))


def test_windows_on_the_same_cells_are_pooled_once(ckpt):
    pool, maps, hw, pool_alone = _pooler_on_two_scales(ckpt, 1)
    # shifted by a pixel at 128 (factor 1.28): the same cells, unless a corner crosses a
    # cell boundary; the big boxes go to 64 (factor 0.64)
    boxes = np.array([[10, 10, 59, 59], [10.5, 10, 59, 59.5], [10, 10, 59, 59],
                      [0, 0, 124, 99], [1, 0, 124, 99], [40, 30, 90, 80]], float)
    pooled, inverse = pool.unique(maps, boxes, hw)
    # the reference: every window pooled on its own
    want = []
    for b, k in zip(boxes, choose_scales(boxes, hw, (64, 128))):
        s = (64, 128)[k]
        want.append(pool_alone(maps[s], b[None] * s / 100)[0])
    np.testing.assert_array_equal(pooled[inverse], np.stack(want))
    np.testing.assert_array_equal(pool(maps, boxes, hw), np.stack(want))
    assert inverse[0] == inverse[1] == inverse[2] and inverse[3] == inverse[4]
    assert len(pooled) == len(set(inverse.tolist())) == 3


def test_detector_commands_end_to_end(ckpt, voc, tmp_path, capsys):
    out = str(tmp_path / "det")
    assert main(["detect-train", "--voc", str(voc), "--checkpoint", ckpt, "--out", out,
                 "--scales", "96", "--svm-scales", "96;96,400", "--proposals", "200",
                 "--ft-iters", "15", "--quiet"]) == 0
    log = json.load(open(os.path.join(out, "train_log.json")))
    assert any("hard negatives" in line for line in log["log"])
    # C keeps the paper's 0.001 at 5011 images: 6 training images here
    assert "SVM C = 0.001 x 5011 / 6 images = 0.8352" in log["log"]
    assert log["config"]["svm_C"] == pytest.approx(0.001 * 5011 / 6)
    # one conv5 folder per scale, shared by the scale sets
    assert sorted(d for d in os.listdir(out) if d.startswith("conv5")) == ["conv5-400", "conv5-96"]
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--json",
                 str(tmp_path / "r.json"), "--quiet"]) == 0
    r = json.load(open(tmp_path / "r.json"))
    assert r["images"] == 3 and set(r) >= {"bbox", "no_bbox"} and r["svms_trained_at"] == ["96"]
    assert r["localization"]["windows"] > 0 and 0.5 <= r["localization"]["mean_iou_before"] < 0.9
    assert all(0 <= ap <= 1 + 1e-12 for ap in r["bbox"]["per_class"].values())   # 11 x (1/11) sums to 1 + 2e-16
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--scales", "96,400", "--json",
                 str(tmp_path / "r2.json"), "--quiet"]) == 0
    assert json.load(open(tmp_path / "r2.json"))["svms_trained_at"] == ["96,400"]
    capsys.readouterr()
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--scales", "400", "--json",
                 str(tmp_path / "r3.json"), "--quiet"]) == 0
    assert "not 400: using those of 96" in capsys.readouterr().out
    assert json.load(open(tmp_path / "r3.json"))["svms_trained_at"] == ["96"]
    # pooling straight from conv5 writes no cache and scores exactly as the cached maps do
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--scales", "200", "--json",
                 str(tmp_path / "r4.json"), "--quiet", "--no-conv-cache"]) == 0
    assert not os.path.exists(os.path.join(out, "conv5-200"))
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--scales", "200", "--json",
                 str(tmp_path / "r5.json"), "--quiet"]) == 0
    assert len(os.listdir(os.path.join(out, "conv5-200"))) == 1 + 3     # identity + 3 images
    r4, r5 = (json.load(open(tmp_path / f"r{k}.json")) for k in (4, 5))
    assert r4["bbox"] == r5["bbox"] and r4["no_bbox"] == r5["no_bbox"]
    assert r4["localization"] == r5["localization"]
    # model combination calibrates each detector's scores (fitted at training); a detector
    # combined with itself detects what it detects alone
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--combine", out, "--json",
                 str(tmp_path / "r6.json"), "--quiet", "--choose-per-class"]) == 0
    r6 = json.load(open(tmp_path / "r6.json"))
    assert r6["calibrated"] and r6["models"] == 2 and not r["calibrated"]
    assert main(["detect-test", "--voc", str(voc), "--model", out, "--combine", out, "--json",
                 str(tmp_path / "r7.json"), "--quiet"]) == 0
    r7 = json.load(open(tmp_path / "r7.json"))      # by default the union, no choice made
    assert "members" not in r7 and r7["bbox"] == r6["bbox"] and r7["calibrated"]
    # a detector and itself tie on their held-out detections: the union everywhere
    assert r6["members"]["held_out_training_images"] == 6
    assert set(r6["members"]["per_class"].values()) == {"union"}
    assert r6["bbox"]["mAP"] == pytest.approx(r["bbox"]["mAP"])
    # each scale set has its own SVMs and regressors, all saved
    det = load_detector(out)
    assert set(det.scorers) == {"96", "96,400"}
    calib = det.scorers["96"]["svm_calib"]
    assert calib.shape == (len(det.classes), 2) and np.isfinite(calib).all()
    assert any("calibrated (Platt, out-of-fold, 2 folds)" in line for line in log["log"])
    assert not np.array_equal(det.scorers["96"]["bbox_w"], det.scorers["96,400"]["bbox_w"])
    assert not np.array_equal(det.scorers["96"]["svm_b"], det.scorers["96,400"]["svm_b"])
    # the saved detector scores windows exactly as before saving
    ds = VOCDataset(voc, "test")
    conv = ConvCache(os.path.join(out, "conv5-96"), det.model, (96,), det.mean, det.pixel_scale)
    maps, hw = conv.get(ds.ids[0], lambda: ds.load(0)[0])
    boxes = np.array([[5, 5, 80, 90], [20, 30, 200, 150]], float)
    s1, b1 = score_windows(det, maps, hw, boxes)
    s2, b2 = score_windows(load_detector(out), maps, hw, boxes)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(b1, b2)
    # the chance baseline: reproducible for the same windows, different for others
    r1, _ = score_windows(det, maps, hw, boxes, scorer="random")
    r2, _ = score_windows(det, maps, hw, boxes, scorer="random")
    r3, _ = score_windows(det, maps, hw, boxes + 1, scorer="random")
    assert r1.shape == s1.shape and np.array_equal(r1, r2) and not np.array_equal(r1, r3)
    with pytest.raises(ValueError, match="scorer"):
        score_windows(det, maps, hw, boxes, scorer="vote")
    # the timing table: every way, the multiply-add counts, the ratios
    capsys.readouterr()
    assert main(["detect-time", "--voc", str(voc), "--model", out, "--images", "1"]) == 0
    table = open(os.path.join(out, "timing.md")).read()
    rows = {line.split("|")[1].strip(): [v.strip() for v in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows[""] == ["SPP 1-scale", "SPP 1-scale, every window", "SPP 5-scale", "R-CNN"]
    n = int(rows["windows through fc6, fc7"][3])
    assert n == len(ProposalCache(os.path.join(out, "proposals"), top=200).get(ds.ids[0], None))
    assert int(rows["windows through fc6, fc7"][0]) <= int(rows["windows through fc6, fc7"][1]) == n
    from train.detection.timing import macs_rcnn
    head = det.head(256)
    per_window = sum(l.macs() for l in det.model.trunk((224, 224)).layers) + \
        sum(l.macs() for l in head.layers[:head.index(det.feature_layer) + 1])
    assert macs_rcnn(det, n) == n * per_window
    ratio = rows["ratio of multiply-adds (the speed-up at equal efficiency)"]
    assert ratio[3] == "1.0x" and all(float(v[:-1]) > 1 for v in ratio[:3])
    pics = str(tmp_path / "pics")
    img = os.path.join(str(voc), "JPEGImages", f"{ds.ids[0]}.jpg")
    assert main(["detect", img, "--model", out, "--out", pics, "--threshold", "-100"]) == 0
    from PIL import Image
    original = np.asarray(Image.open(img).convert("RGB"))
    drawn = np.asarray(Image.open(os.path.join(pics, f"{ds.ids[0]}-detections.png")).convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any()   # boxes were drawn
    proj = np.asarray(Image.open(os.path.join(pics, f"{ds.ids[0]}-projection.png")).convert("RGB"))
    red = (proj[..., 0] == 255) & (proj[..., 1] == 0) & (proj[..., 2] == 0)
    green = (proj[..., 0] == 0) & (proj[..., 1] == 220) & (proj[..., 2] == 0)
    assert red.sum() > 20 and green.sum() > 4      # the window (red) and its cells (green)
    capsys.readouterr()


def _untrained_detector(ckpt, folder):
    """A detector of the small net with random SVMs and no box regressors, saved to
    folder/detector.h5 without training (what `detect` needs, in a fraction of a second)."""
    from train.detection.detector import Detector
    det = Detector(nets.load(ckpt), ["a", "b"], {"scales": (64,), "svm_scales": ((64,),),
                                                 "proposals": 50, "seed": 0})
    rng = np.random.default_rng(0)
    det.svm_w = rng.standard_normal((2, det.feature_dim)).astype(np.float32)
    det.svm_b = np.zeros(2, np.float32)
    det.keep_scorer((64,))
    det.save(os.path.join(folder, "detector.h5"))
    return str(folder)


def test_detect_skips_bad_images_names_tiny_ones_and_keeps_same_names_apart(ckpt, tmp_path, capsys):
    from PIL import Image
    model = _untrained_detector(ckpt, tmp_path / "det")
    rng = np.random.default_rng(3)
    for sub in ("a", "b"):
        os.makedirs(tmp_path / sub)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / sub / "x.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "X-2.png")
    pics = tmp_path / "pics"
    images = [str(tmp_path / p) for p in ("a/x.jpg", "broken.jpg", "b/x.jpg", "dot.png", "X-2.png")]
    capsys.readouterr()
    assert main(["detect", *images, "--model", model, "--out", str(pics)]) == 1
    out, err = capsys.readouterr()
    assert "broken.jpg" in err and "dot.png" in err and "1 x 1 image" in err
    assert "2 of 5 images skipped" in err
    # every readable image drawn, none over another (X-2 after x and x-2: X-2-2)
    assert sorted(os.listdir(pics)) == sorted(f"{s}-{k}.png" for s in ("x", "x-2", "X-2-2")
                                               for k in ("detections", "projection"))
    a, b = (np.asarray(Image.open(pics / f"{s}-detections.png")) for s in ("x", "x-2"))
    np.testing.assert_array_equal(a[..., 0].shape, (40, 50))
    assert not np.array_equal(a, b)
    assert main(["detect", images[0], "--model", model, "--out", str(pics)]) == 0
    assert main(["detect", images[0], "--model", model, "--out", str(pics), "--top", "-1"]) == 2


def test_conv_cache_paths_never_leave_their_folder_and_damage_is_named(ckpt, tmp_path):
    model = nets.load(ckpt)
    mean, sc = model.input_normalization()
    cache = ConvCache(str(tmp_path / "conv"), model, (64,), mean, sc)
    for bad in ("../../x", "a/b", "..", "/tmp/x", "a\0b"):
        with pytest.raises(ValueError, match="name"):
            cache.path(bad)
    assert not (tmp_path / "x.h5").exists()
    (tmp_path / "conv" / "identity.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"identity.json is damaged .*delete"):
        ConvCache(str(tmp_path / "conv"), model, (64,), mean, sc)


def test_a_detector_file_is_a_checksummed_checkpoint_and_old_ones_are_refused(ckpt, tmp_path):
    folder = _untrained_detector(ckpt, tmp_path / "det")
    path = os.path.join(folder, "detector.h5")
    det = load_detector(folder)
    assert det.classes == ["a", "b"] and det.svm_w.shape == (2, det.feature_dim)
    assert det.model.checksum == nets.load(ckpt).checksum          # the base net it was made from
    with h5py.File(path, "r+") as f:                                # flip one value of the head
        f["extras/head:fc8.W"][0, 0] += 1.0
    with pytest.raises(ValueError, match=r"extras/head:fc8.W"):
        load_detector(folder)
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["format"] = "minispp-detector-2"
    with pytest.raises(ValueError, match="earlier development version.*detect-train"):
        load_detector(str(tmp_path / "old.h5"))
    with pytest.raises(ValueError, match="not a detector"):
        load_detector(ckpt)


def _synthetic_training_set(ckpt, voc, folder, **config):
    """A detector of the small net, the trainval images of `voc` with random proposals plus
    8 jittered copies of each ground-truth box (so that some overlap it by >= 0.5), and
    their conv5 maps at scale 96, cached: what the SVM and box-regression stages read."""
    from train.detection.detector import Detector
    ds = VOCDataset(voc, "trainval")
    det = Detector(nets.load(ckpt), ds.classes, {"scales": (96,), "svm_scales": ((96,),), "seed": 0,
                                                 "svm_C": 0.5, **config})
    conv = ConvCache(os.path.join(folder, "conv5-96"), det.model, (96,), det.mean, det.pixel_scale)
    rng = np.random.default_rng(0)
    images = []
    for i in range(len(ds)):
        img = ds.load(i)[0]
        h, w = img.shape[:2]
        boxes, cls, diff = ds.object_boxes(i)
        boxes, cls = boxes[~diff], cls[~diff]
        xy = rng.uniform(0, 1, (80, 2)) * [w, h]
        props = [np.column_stack([xy, np.minimum(xy + rng.uniform(0.1, 0.6, (80, 2)) * [w, h],
                                                 [w - 1, h - 1])])]
        for bx in boxes:
            size = np.tile([bx[2] - bx[0] + 1, bx[3] - bx[1] + 1], 2)
            props.append(np.clip(bx + rng.normal(0, 0.08, (8, 4)) * size, 0, [w - 1, h - 1] * 2))
        p = np.concatenate(props)
        p = p[(p[:, 2] > p[:, 0] + 2) & (p[:, 3] > p[:, 1] + 2)]
        images.append(ImageWindows(ds.ids[i], (h, w), boxes, cls, p, len(ds.classes)))
        conv.get(ds.ids[i], lambda img=img: img)
    return det, images, conv


class _CountingCache:
    def __init__(self, conv):
        self.conv, self.reads = conv, 0

    def get(self, image_id, load):
        self.reads += 1
        return self.conv.get(image_id, load)


def test_streaming_svms_are_the_in_memory_svms(ckpt, voc, tmp_path):
    from train.detection.svms import negative_keys, train_svms, train_svms_in_memory
    # a cache of 60 negatives per class, 20 at first, two mining rounds: the cap is reached
    det, images, conv = _synthetic_training_set(ckpt, voc, tmp_path, svm_init_negatives=20,
                                                svm_cache_windows=60, hard_rounds=2)
    ref_log, log = [], []
    W0, b0 = train_svms_in_memory(det, images, conv, ref_log.append, progress=False)
    scale0 = det.svm_scale
    counting = _CountingCache(conv)
    W, b = train_svms(det, images, counting, log.append, progress=False, scratch=tmp_path / "scratch")
    assert list((tmp_path / "scratch").iterdir()) == []               # the scratch files are gone
    np.testing.assert_allclose(W, W0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b, b0, rtol=1e-6, atol=1e-6)
    assert det.svm_scale == scale0 and sorted(log) == sorted(ref_log)
    assert any("round 2" in line and "capped at 60" in line for line in log)
    assert (W0 != 0).any(axis=1).sum() >= 4                         # several classes have SVMs
    # one pass over the images per round for all classes: 6 images x (1 + 2 rounds)
    assert counting.reads == len(images) * 3
    # the first pass computes the features of the positives, the initial negatives and the
    # norm sample only: with a sample of 25 windows, far fewer than the images' windows
    fed = []
    fc7 = det.fc7
    det.fc7 = lambda pooled: fed.append(len(pooled)) or fc7(pooled)
    det.config["svm_norm_windows"] = 25
    ref_log, log = [], []
    W0, b0 = train_svms_in_memory(det, images, conv, ref_log.append, progress=False)
    scale0, windows = det.svm_scale, sum(fed)
    fed.clear()
    W, b = train_svms(det, images, conv, log.append, progress=False, scratch=tmp_path / "s25")
    np.testing.assert_allclose(W, W0, rtol=1e-6, atol=1e-6)
    # fc7 of a subset of rows may differ from the whole image's in the last float32 bits
    assert det.svm_scale == pytest.approx(scale0, rel=1e-6) and sorted(log) == sorted(ref_log)
    first = sum(fed[:len(images)])            # pass 1's fc7 rows, then the mining rounds'
    gts = sum(len(im.gt_boxes) for im in images)
    assert first <= gts + 25 + 20 * len(det.classes) and first < 0.4 * windows, (first, windows)
    det.fc7 = fc7
    det.config["svm_norm_windows"] = 10000
    # the comparison can fail: without the 0.7 rule, or with another cap, other SVMs
    det.config["svm_neg_neg"] = 1.0
    W1, _ = train_svms(det, images, conv, log.append, progress=False)
    det.config.update(svm_neg_neg=0.7, svm_cache_windows=10 ** 6)
    W2, _ = train_svms(det, images, conv, log.append, progress=False)
    assert np.abs(W1 - W0).max() > 1e-2 and np.abs(W2 - W0).max() > 1e-2
    # the random sample depends on (seed, class, image, window) only
    k = negative_keys(1, 2, 3, np.arange(5))
    assert np.array_equal(k, negative_keys(1, 2, 3, np.arange(5)))
    assert np.array_equal(k[2:], negative_keys(1, 2, 3, np.arange(2, 5)))
    for other in (negative_keys(0, 2, 3, np.arange(5)), negative_keys(1, 1, 3, np.arange(5)),
                  negative_keys(1, 2, 4, np.arange(5))):
        assert not np.isin(k, other).any()


def test_svm_caches_wait_on_disk_and_come_back_exactly(tmp_path):
    """A class's cache of negatives keeps its features in a scratch file, not in memory (so
    the SVM stage holds one class's cache at a time), and gives back exactly the rows it
    kept, in (image, row) order; the file is removed."""
    from train.detection.svms import _Pool
    rng = np.random.default_rng(0)
    pool, offered = _Pool(cap=70, dim=16, folder=tmp_path), {}
    for j in range(6):
        feats = rng.standard_normal((40, 16)).astype(np.float16)
        rows = np.sort(rng.choice(40, 25, replace=False))
        rank = rng.random(25)
        pool.add(j, rows, rank, feats[rows])
        offered.update({(j, int(r)): (k, feats[r]) for r, k in zip(rows, rank)})
        assert all(a.dtype != np.float16 for part in pool.parts for a in part)    # indices only
        assert len(list(tmp_path.iterdir())) == 1
    j, r, f = pool.result()
    best = sorted(offered, key=lambda key: (offered[key][0], key))[:70]
    assert sorted(zip(j.tolist(), r.tolist())) == sorted(best) == list(zip(j.tolist(), r.tolist()))
    assert np.array_equal(f, np.stack([offered[(a, b)][1] for a, b in zip(j.tolist(), r.tolist())]))
    assert list(tmp_path.iterdir()) == []


def test_streaming_box_regression_is_ridge_on_the_stacked_rows(ckpt, voc, tmp_path, monkeypatch):
    from sklearn.linear_model import Ridge

    import train.detection.svms as svms
    from minispp.detection.boxes import regression_targets
    from train.detection.windows import pooled_windows
    det, images, conv = _synthetic_training_set(ckpt, voc, tmp_path)
    cfg, K = det.config, len(det.classes)
    xs, ts, cs = [], [], []                       # every row stacked, as before streaming
    for im in images:
        ov, cls = im.max_overlap()
        rows = np.flatnonzero(~im.is_gt & (ov >= cfg["bbox_iou"]))
        xs.append(pooled_windows(det, conv, im, rows).astype(np.float16))
        ts.append(regression_targets(im.windows[rows], im.gt_boxes[im.match[rows, cls[rows]]]))
        cs.append(cls[rows])
    x, t, cl = np.concatenate(xs), np.concatenate(ts), np.concatenate(cs)
    scale = cfg["feature_norm"] / np.linalg.norm(x[:2000].astype(np.float32), axis=1).mean()
    trained = [c for c in range(K) if (cl == c).sum() >= 2]
    assert len(trained) >= 4
    want = {c: Ridge(alpha=cfg["bbox_lambda"]).fit(x[cl == c].astype(np.float64) * scale, t[cl == c])
            for c in trained}
    # the statistics (X^T X ...) of all classes in one pass, of one class per pass, and the
    # kernel form on the rows of each class
    # (the kernel form in blocks of 7 rows too; its rows wait on disk in scratch)
    for kernel_rows, mb, block in ((0.0, 4096, 512), (0.0, 1e-3, 512), (1.0, 4096, 512), (1.0, 4096, 7)):
        monkeypatch.setattr(svms, "KERNEL_ROWS", kernel_rows)
        monkeypatch.setattr(svms._RidgeStats, "KERNEL_CHUNK", block)
        cfg["bbox_stats_mb"] = mb
        log = []
        svms.train_box_regressors(det, images, conv, log.append, progress=False, scratch=tmp_path / "s")
        assert list((tmp_path / "s").iterdir()) == []
        assert det.bbox_scale == pytest.approx(scale, rel=1e-6)
        assert f"{1 if mb > 1 else len(trained)} pass(es)" in log[-1]
        for c in range(K):
            if c in want:
                np.testing.assert_allclose(det.bbox_w[c], want[c].coef_, rtol=1e-5,
                                           atol=1e-6 * np.abs(want[c].coef_).max())
                np.testing.assert_allclose(det.bbox_b[c], want[c].intercept_, rtol=1e-5, atol=1e-6)
            else:
                assert not det.bbox_w[c].any() and not det.bbox_b[c].any()


def test_finetuning_holds_at_most_its_cap_of_windows_and_visits_every_image(ckpt, voc, tmp_path):
    from train.detection.finetune import finetune, image_groups
    # the groups: one in order when everything fits; else a seeded shuffle covering each image once
    assert image_groups(5, 10, 100, np.random.default_rng(0)) == [[0, 1, 2, 3, 4]]
    groups = image_groups(7, 10, 25, np.random.default_rng(0))
    assert [len(g) for g in groups] == [2, 2, 2, 1]
    assert sorted(i for g in groups for i in g) == list(range(7))
    # a pool of 40 windows with 12 sampled per image: 3 images a group, 6 images -> 2 groups
    det, images, conv = _synthetic_training_set(ckpt, voc, tmp_path, ft_cache_windows=40,
                                                ft_pos_per_image=4, ft_neg_per_image=8,
                                                ft_batch=8, ft_iters=30)
    counting, stats, log = _CountingCache(conv), {}, []
    history = finetune(det, images, counting, log.append, progress=False, stats=stats)
    assert len(history) == 30 and np.isfinite(history).all()
    assert stats["groups"] == 2 and 0 < stats["peak_pool_windows"] <= 40
    assert counting.reads >= len(images)                   # every image pooled at least once
    assert "2 groups of images" in log[0]
    # with a pool that holds every image's windows: one group, the windows pooled once
    det1, _, _ = _synthetic_training_set(ckpt, voc, tmp_path, ft_pos_per_image=4, ft_neg_per_image=8,
                                         ft_batch=8, ft_iters=30)
    counting1, stats1 = _CountingCache(conv), {}
    finetune(det1, images, counting1, lambda m: None, progress=False, stats=stats1)
    assert stats1["groups"] == 1 and counting1.reads == len(images)
    assert stats1["peak_pool_windows"] > 40


def test_platt_fit_recovers_a_known_sigmoid_and_keeps_each_detectors_ranking():
    from train.detection.calibration import calibrated, platt_fit
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, 200000)
    y = rng.random(s.size) < 1 / (1 + np.exp(-(1.5 * s - 2.0)))
    a, b = platt_fit(s, y)
    assert abs(a - 1.5) < 0.05 and abs(b + 2.0) < 0.05
    # weights: dropping 9 of 10 false windows and weighting the rest by 10 gives the same fit
    keep = y | (rng.random(s.size) < 0.1)
    aw, bw = platt_fit(s[keep], y[keep], np.where(y[keep], 1.0, 10.0))
    assert abs(aw - a) < 0.1 and abs(bw - b) < 0.2
    # separable data stays finite (Platt's targets), and the map is increasing
    a2, b2 = platt_fit([-2, -1, 1, 2], [0, 0, 1, 1])
    assert np.isfinite([a2, b2]).all() and a2 > 0
    scores = rng.normal(size=(50, 2))
    p = calibrated(scores, [[a, b], [a2, b2]])
    assert (np.argsort(p, axis=0) == np.argsort(scores, axis=0)).all()
    with pytest.raises(ValueError, match="true and false"):
        platt_fit([1.0, 2.0], [1, 1])
    # scores that fall as the truth rises (a weak SVM on held-out images): the prior for
    # every window, the ranking kept
    from train.detection.calibration import MIN_SLOPE
    y3 = rng.random(s.size) < 1 / (1 + np.exp(-(-0.5 * s - 3.0)))
    a3, b3 = platt_fit(s, y3)
    assert a3 == MIN_SLOPE and b3 == pytest.approx(np.log(y3.mean() / (1 - y3.mean())), abs=1e-3)
    z = calibrated(s[:1000, None], [[a3, b3]])[:, 0]
    assert (np.argsort(z, kind="stable") == np.argsort(s[:1000], kind="stable")).all()
    assert np.ptp(z) < 1e-7


def test_calibration_lets_the_better_detector_win_the_union():
    from train.detection.calibration import calibrated
    from train.detection.testing import combine
    from train.voc_eval import detection_ap
    # one class; on each image detector A finds the object (score 1.0) and a false box (0.2);
    # B, weaker, scores the false box 8.0 and the object 6.0 on a larger scale of its own
    gt = {f"im{i}": (np.array([[10.0, 10, 60, 60]]), np.array([False])) for i in range(4)}
    true_box, false_box = [10.0, 10, 60, 60], [200.0, 200, 260, 260]

    def dets(scores_true, scores_false):
        return {0: (np.array([true_box, false_box]), np.array([scores_true, scores_false]))}

    def ap(per_image):
        ids = [k for k, d in per_image.items() for _ in range(len(d[0][1]))]
        return detection_ap(ids, np.concatenate([d[0][1] for d in per_image.values()]),
                            np.concatenate([d[0][0] for d in per_image.values()]), gt)[0]
    A = {k: dets(1.0, 0.2) for k in gt}
    B = {k: dets(6.0, 8.0) for k in gt}
    raw = ap({k: combine([A[k], B[k]]) for k in gt})
    # calibration fitted on (made-up) training data of each: A's scores mean what they say,
    # B's 8 is as likely false as true
    cal_a, cal_b = np.array([[4.0, -2.0]]), np.array([[0.2, -1.5]])

    def cal(d, c):
        return {0: (d[0][0], calibrated(d[0][1][:, None], c)[:, 0])}
    combined = ap({k: combine([cal(A[k], cal_a), cal(B[k], cal_b)]) for k in gt})
    assert ap(A) == pytest.approx(1.0) and raw < 0.6
    assert combined == pytest.approx(ap(A))


def test_calibration_folds_split_the_images_evenly_and_reproducibly():
    from train.detection.calibration import calibration_folds
    f = calibration_folds(11, 3, seed=0)
    assert sorted(np.bincount(f).tolist()) == [3, 4, 4]
    assert np.array_equal(f, calibration_folds(11, 3, seed=0))
    assert not np.array_equal(calibration_folds(40, 2, seed=0), calibration_folds(40, 2, seed=1))
    assert (calibration_folds(5, 1, seed=0) == 0).all()


def test_calibration_scores_each_image_with_svms_that_never_saw_it(ckpt, voc, tmp_path, monkeypatch):
    """Out-of-fold calibration: every image whose windows feed the Platt fit is scored by
    SVMs trained on the other folds only, with the C for that many images; the final SVMs
    are left as they were. With calib_folds = 1 it is the final SVMs' (in-sample) fit."""
    from train.detection import calibration
    from train.detection.svms import train_svms
    det, images, conv = _synthetic_training_set(ckpt, voc, tmp_path, svm_init_negatives=20,
                                                svm_cache_windows=60, calib_folds=2)
    train_svms(det, images, conv, lambda m: None, progress=False)
    W, b = det.svm_w.copy(), det.svm_b.copy()
    trained, scored = [], []
    real_train = calibration.train_svms

    def recording_train(d, imgs, *args, **kw):
        trained.append(({im.id for im in imgs}, d.config["svm_C"]))
        out = real_train(d, imgs, *args, **kw)
        d.svm_w = d.svm_w.copy()                 # a mark: the scores must come from these
        return out
    real_scores = calibration._scores

    def recording_scores(f, scale, Wk, bk):
        scored.append(Wk)
        return real_scores(f, scale, Wk, bk)
    monkeypatch.setattr(calibration, "train_svms", recording_train)
    monkeypatch.setattr(calibration, "_scores", recording_scores)
    seen = []
    real_features = calibration._window_features
    monkeypatch.setattr(calibration, "_window_features",
                        lambda d, c, im, rows=None: seen.append(im.id) or real_features(d, c, im, rows))
    log = []
    calib = calibration.calibrate_svms(det, images, conv, log.append, progress=False,
                                       scratch=tmp_path / "scratch")
    assert len(trained) == 2 and sorted(seen) == sorted(im.id for im in images)
    fold = calibration.calibration_folds(len(images), 2, det.config["seed"])
    for k, (ids, C) in enumerate(trained):
        assert ids == {im.id for i, im in enumerate(images) if fold[i] != k}
        assert C == pytest.approx(0.5 * len(images) / len(ids))
    held_out = [im.id for i, im in enumerate(images) if fold[i] == 0]
    # the first fold's images are scored by the first fold's SVMs, trained without them
    assert set(seen[:len(held_out)]) == set(held_out) and not set(held_out) & trained[0][0]
    assert all(Wk is not W and not np.array_equal(Wk, det.svm_w) for Wk in scored)
    np.testing.assert_array_equal(det.svm_w, W)
    np.testing.assert_array_equal(det.svm_b, b)
    assert calib.shape == (len(det.classes), 2) and np.isfinite(calib).all()
    assert any("out-of-fold, 2 folds" in line for line in log)
    # in-sample: the final SVMs score every image, no SVM is trained
    trained.clear(), scored.clear()
    det.config["calib_folds"] = 1
    inside = calibration.calibrate_svms(det, images, conv, log.append, progress=False)
    assert trained == [] and all(Wk is W or np.array_equal(Wk, W) for Wk in scored)
    assert not np.allclose(inside, calib)


def test_detect_calibrate_refits_the_calibration_alone(ckpt, voc, tmp_path, capsys):
    out = str(tmp_path / "det")
    assert main(["detect-train", "--voc", str(voc), "--checkpoint", ckpt, "--out", out,
                 "--scales", "96", "--svm-scales", "96;96,400", "--proposals", "100",
                 "--ft-iters", "5", "--quiet"]) == 0
    before = load_detector(out)
    assert main(["detect-calibrate", "--model", out, "--scales", "96", "--folds", "1", "--quiet"]) == 0
    inside = load_detector(out)
    log = json.load(open(os.path.join(out, "calibrate_log.json")))
    assert log["calib_folds"] == 1 and log["images"] == 6
    assert any("in-sample" in line for line in log["log"])
    # only the chosen scorer's calibration changed; SVMs, regressors and the head did not
    for key in ("96", "96,400"):
        for part in ("svm_w", "svm_b", "bbox_w", "bbox_b"):
            np.testing.assert_array_equal(inside.scorers[key][part], before.scorers[key][part])
    np.testing.assert_array_equal(inside.scorers["96,400"]["svm_calib"],
                                  before.scorers["96,400"]["svm_calib"])
    assert not np.allclose(inside.scorers["96"]["svm_calib"], before.scorers["96"]["svm_calib"])
    for name, p in before.head_params.items():
        np.testing.assert_array_equal(inside.head_params[name].value, p.value)
    # out-of-fold again (the default): the training's calibration, to the bit
    assert main(["detect-calibrate", "--model", out, "--scales", "96", "--quiet"]) == 0
    np.testing.assert_array_equal(load_detector(out).scorers["96"]["svm_calib"],
                                  before.scorers["96"]["svm_calib"])
    capsys.readouterr()
    assert main(["detect-calibrate", "--model", out, "--scales", "200", "--quiet"]) == 2
    assert "has no SVMs trained at scales 200 (it has 96, 96,400)" in capsys.readouterr().err


class _HeldOut:
    """What choose_members reads of a detector: classes, calibration and held-out detections."""

    def __init__(self, classes, calib, images, dets, gt):
        self.classes, self.svm_calib = classes, np.asarray(calib, np.float64)
        self.svm_oof_images = np.asarray(images, np.int64)
        self.svm_oof_dets = np.asarray(dets, np.float32).reshape(-1, 7)
        self.svm_oof_gt = np.asarray(gt, np.float32).reshape(-1, 6)


def test_combination_keeps_per_class_the_union_or_the_member_that_does_better_on_held_out_images():
    from train.detection.calibration import choose_members
    obj = [10, 10, 60, 60]
    far = [200, 200, 260, 260]
    gt = [[i, c] + obj for i in range(4) for c in (0, 1)]
    # class 0: A finds the object in every image; B scores a false box above its own hits.
    # class 1: A finds the object in images 0-1 only, B in images 2-3 only: the union finds all
    a = [[i, 0] + obj + [2.0] for i in range(4)] + [[i, 1] + obj + [2.0] for i in (0, 1)]
    b = ([[i, 0] + far + [3.0] for i in range(4)] + [[i, 0] + obj + [1.0] for i in range(4)]
         + [[i, 1] + obj + [2.0] for i in (2, 3)])
    calib = [[1.0, 0.0], [1.0, 0.0]]
    A = _HeldOut(["x", "y"], calib, [11, 12, 13, 14], a, gt)
    B = _HeldOut(["x", "y"], calib, [11, 12, 13, 14], b, gt)
    choice, ap, shared = choose_members([A, B])
    assert shared == 4 and choice.tolist() == [0, -1]
    assert ap[0].tolist() == pytest.approx([ap[0, 0], 1.0, ap[0, 2]]) and ap[0, 0] < 1.0
    assert ap[1, 0] == pytest.approx(1.0) and ap[1, 1] < 1.0 and ap[1, 2] < 1.0
    # B's images keyed otherwise: they are other images, nothing is shared, no choice is made
    assert choose_members([A, _HeldOut(["x", "y"], calib, [21, 22, 23, 24], b, gt)]) is None
    A.svm_oof_images = None                       # calibrated in-sample: nothing held out
    assert choose_members([A, B]) is None
    # the test-time combination drops the other detector's detections of a class kept alone
    da = {0: (np.array([obj], float), np.array([0.5])), 1: (np.array([obj], float), np.array([0.5]))}
    db = {0: (np.array([far], float), np.array([0.9])), 1: (np.array([far], float), np.array([0.9]))}
    got = combine([da, db], members=np.array([0, -1]))
    np.testing.assert_array_equal(got[0][1], [0.5])
    np.testing.assert_array_equal(got[1][1], [0.9, 0.5])


def test_returning_free_memory_starts_no_child_process():
    """return_free_memory runs between the detector's stages; it must not start a child (as
    ctypes.util.find_library does, running ldconfig), whose peak resident size Linux starts
    at the parent's and would pass for the selective-search workers' peak in train_log.json."""
    import subprocess
    import sys
    code = ("import resource\nfrom train.resources import return_free_memory\n"
            "return_free_memory()\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "0", out.stdout + out.stderr
