"""Full-image features, the HDF5 feature cache (resume after a kill, refusals) and the SVM
stage, on the small net and a small embedded VOC-layout data set."""
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
from conftest import save_small
from minispp.embedded import make_voc
from minispp.feature_cache import CacheMismatch, CacheWriter, cache_info, read_cache
from minispp.voc import VOCDataset
from train.cli import main
from train.features import LayerTaps, extract, view_input
from train.svm import (caltech_classification, fit_multilabel, folder_classification,
                       l2_normalize, validation_split, voc_classification)
from train.views import normalization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc") / "embedded-voc", seed=0, trainval=14, test=8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_small(tmp_path_factory.mktemp("ck") / "small.h5", 0)


def test_views_have_the_paper_shapes():
    img = np.zeros((300, 450, 3), np.uint8)
    assert view_input(img, "full", 224, 0.0).shape == (3, 224, 336)
    assert view_input(img, "crop", 224, 0.0).shape == (3, 224, 224)
    assert view_input(img, "warp", 392, 0.0).shape == (3, 392, 392)
    with pytest.raises(ValueError, match="unknown view 'tile'"):
        view_input(img, "tile", 224, 0.0)


def test_features_are_the_layer_outputs(ckpt, voc, tmp_path):
    outs = {k: str(tmp_path / f"{k}.h5") for k in ("pool5", "spp", "fc6")}
    r = extract(ckpt, "voc", voc, "trainval", list(outs), 48, "full", outs, batch=4,
                workers=1, progress=False, shard_size=5)
    assert r["images"] == r["computed"] == 14
    fs = {k: read_cache(p) for k, p in outs.items()}
    model = nets.load(ckpt)
    mean, scale = normalization(model.extras)
    ds = VOCDataset(voc, "trainval")
    for i in (0, 9):
        x = view_input(ds.load(i)[0], "full", 48, mean, scale)[None]
        net = model.instance(1, x.shape[2:])
        h = x
        for layer in net.layers:
            h = layer.forward(h, train=False)
            if layer.name == "spp5":
                spp = h.reshape(1, -1)
            if layer.name == "relu6":
                fc6 = h.reshape(1, -1)
                break
        np.testing.assert_array_equal(fs["spp"].features[i], spp[0])
        np.testing.assert_array_equal(fs["pool5"].features[i], spp[0, :5 * 9])  # 3x3 level, 5 channels
        np.testing.assert_array_equal(fs["fc6"].features[i], fc6[0])
    assert fs["spp"].ids == ds.ids and np.array_equal(fs["spp"].labels, ds.labels())
    assert fs["spp"].classes == ds.classes and fs["spp"].valid.all()
    assert fs["fc6"].identity["layer"] == "fc6" and fs["fc6"].identity["scale"] == 48
    assert fs["fc6"].provenance["checkpoint_path"] == os.path.abspath(ckpt)
    assert not os.path.exists(outs["spp"] + ".parts")
    again = extract(ckpt, "voc", voc, "trainval", list(outs), 48, "full", outs, progress=False)
    assert again["computed"] == 0                       # finished caches are reused


def test_a_layer_the_net_lacks_and_spp_of_a_no_spp_net_are_refused(tmp_path, voc):
    m = nets.load(save_small(tmp_path / "a.h5", 0))
    with pytest.raises(ValueError, match="net small has no fc7 layer"):
        LayerTaps(m, ["fc7"])
    nospp = nets.build("small", num_classes=10, spp=None)
    with pytest.raises(ValueError, match="'spp' layer needs an SPP net"):
        LayerTaps(nospp, ["spp"])


SLOW_EXTRACT = """
import sys, time
import train.features as F
orig = F.view_input
def slow(*a, **k):
    time.sleep(0.25)
    return orig(*a, **k)
F.view_input = slow
ckpt, voc, a, b = sys.argv[1:5]
F.extract(ckpt, "voc", voc, "trainval", ["spp", "fc6"], 48, "full", {"spp": a, "fc6": b},
          batch=2, workers=1, progress=False, shard_size=3)
"""


def test_cache_resumes_after_a_kill_with_identical_features(ckpt, voc, tmp_path):
    a, b = str(tmp_path / "spp.h5"), str(tmp_path / "fc6.h5")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, ckpt, str(voc), a, b], env=env)
    try:
        deadline = time.time() + 120
        while len(glob.glob(b + ".parts/shard-*.h5")) < 2:
            assert proc.poll() is None, "the extraction ended before it could be killed"
            assert time.time() < deadline, "no shard written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not os.path.exists(a) and not os.path.exists(b)
    shards = glob.glob(a + ".parts/shard-*.h5")
    assert 2 <= len(shards) < 5
    for s in shards:                                    # only whole shards are left
        with h5py.File(s, "r") as f:
            assert f["features"].shape[0] == 3 or s.endswith("12.h5")
    with pytest.raises(ValueError, match="unfinished"):
        read_cache(a)
    assert "UNFINISHED" in cache_info(a)
    resumed = extract(ckpt, "voc", voc, "trainval", ["spp", "fc6"], 48, "full",
                      {"spp": a, "fc6": b}, batch=2, workers=1, progress=False)
    assert 0 < resumed["computed"] < 14
    ref = {k: str(tmp_path / f"ref-{k}.h5") for k in ("spp", "fc6")}
    extract(ckpt, "voc", voc, "trainval", ["spp", "fc6"], 48, "full", ref, batch=2,
            workers=1, progress=False, shard_size=3)
    for k, p in (("spp", a), ("fc6", b)):
        np.testing.assert_array_equal(read_cache(p).features, read_cache(ref[k]).features)


def test_cache_from_another_checkpoint_or_other_arguments_is_refused(ckpt, voc, tmp_path):
    out = {"spp": str(tmp_path / "spp.h5")}
    extract(ckpt, "voc", voc, "test", ["spp"], 48, "full", out, progress=False)
    other = save_small(tmp_path / "other.h5", 1)
    with pytest.raises(CacheMismatch, match="checkpoint: cache has"):
        extract(other, "voc", voc, "test", ["spp"], 48, "full", out, progress=False)
    with pytest.raises(CacheMismatch, match="view: cache has 'full', asked for 'warp'"):
        extract(ckpt, "voc", voc, "test", ["spp"], 48, "warp", out, progress=False)
    with pytest.raises(CacheMismatch, match="scale"):
        read_cache(out["spp"], expect={"scale": 64})
    # an unfinished cache is refused the same way
    w = CacheWriter(tmp_path / "u.h5", {"layer": "fc6"}, ["a", "b"], [0, 1], ["x", "y"], shard_size=1)
    w.write(0, np.ones((1, 3)), [True])
    with pytest.raises(CacheMismatch, match="layer: cache has 'fc6', asked for 'fc7'"):
        CacheWriter(tmp_path / "u.h5", {"layer": "fc7"}, ["a", "b"], [0, 1], ["x", "y"])
    assert CacheWriter(tmp_path / "u.h5", {"layer": "fc6"}, ["a", "b"], [0, 1], ["x", "y"]).pending() == [(1, 2)]
    with pytest.raises(CacheMismatch, match="ids_digest"):
        CacheWriter(tmp_path / "u.h5", {"layer": "fc6"}, ["a", "c"], [0, 1], ["x", "y"])


def test_unreadable_image_is_flagged_not_fatal(ckpt, voc, tmp_path, capfd):
    import shutil
    copy = tmp_path / "voc"
    shutil.copytree(voc, copy)
    bad = copy / "JPEGImages" / "000016.jpg"            # the second test image
    bad.write_bytes(b"not a jpeg")
    out = {"fc6": str(tmp_path / "fc6.h5")}
    r = extract(ckpt, "voc", copy, "test", ["fc6"], 48, "full", out, progress=False, shard_size=4)
    assert len(r["skipped"]) == 1 and "000016.jpg" in r["skipped"][0]
    assert "000016.jpg" in capfd.readouterr().err
    fs = read_cache(out["fc6"])
    assert fs.valid.tolist() == [i != 1 for i in range(8)]
    assert not fs.features[1].any() and fs.features[0].any()


def test_command_line_features_svm_and_cache_info(ckpt, voc, tmp_path, capsys):
    stem = str(tmp_path / "f")
    for split in ("trainval", "test"):
        assert main(["features", "--checkpoint", ckpt, "--voc", str(voc), "--split", split,
                     "--layer", "spp,fc6", "--scale", "48", "--view", "full",
                     "--out", f"{stem}-{split}.h5", "--quiet"]) == 0
    assert main(["cache", "info", f"{stem}-test-spp-s48.h5"]) == 0
    assert "8 images x 70 features" in capsys.readouterr().out
    res = tmp_path / "r.json"
    assert main(["svm", "--train", f"{stem}-trainval-fc6-s48.h5", "--test",
                 f"{stem}-test-fc6-s48.h5", "--json", str(res)]) == 0
    out = capsys.readouterr().out
    r = json.loads(res.read_text())
    assert r["task"] == "voc07-classification" and 0 <= r["mAP"] <= 1
    assert f"mAP {100 * r['mAP']:.2f}%" in out
    assert main(["svm", "--train", f"{stem}-trainval-fc6-s48.h5", "--test",
                 f"{stem}-test-spp-s48.h5"]) == 2           # layers differ: refused
    assert "layer: cache has 'spp', asked for 'fc6'" in capsys.readouterr().err


# ---- the SVM stage on synthetic caches -----------------------------------------------------

class FS:
    def __init__(self, x, y, classes, path="mem"):
        self.features, self.labels, self.classes, self.path = x, y, classes, path
        self.valid = np.ones(len(x), bool)
        self.ids = [str(i) for i in range(len(x))]


def blobs(rng, n_per, k, dim=20, spread=0.3):
    centers = rng.normal(size=(k, dim))
    y = np.repeat(np.arange(k), n_per)
    return centers[y] + spread * rng.normal(size=(len(y), dim)), y


def test_l2_normalize_and_validation_split():
    x = l2_normalize([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(x, [[0.6, 0.8], [0, 0]])
    y = np.repeat([0, 1, 2], [10, 5, 20])
    fit, val = validation_split(len(y), y, seed=0)
    assert not set(fit) & set(val) and len(fit) + len(val) == len(y)
    assert np.bincount(y[val]).tolist() == [2, 1, 4]
    assert np.array_equal(val, validation_split(len(y), y, seed=0)[1])


def test_voc_svm_separable_classes_and_zero_labels_left_out(monkeypatch):
    rng = np.random.default_rng(0)
    x, c = blobs(rng, 30, 3)
    labels = np.where(np.eye(3)[c] > 0, 1, -1).astype(np.int8)
    labels[:5, 1] = 0                                     # class-0 images marked 0 for class 1
    xt, ct = blobs(np.random.default_rng(0), 10, 3)
    lt = np.where(np.eye(3)[ct] > 0, 1, -1).astype(np.int8)
    r = voc_classification(FS(x, labels, ["a", "b", "c"]), FS(xt, lt, ["a", "b", "c"]))
    assert r["mAP"] == pytest.approx(1.0) and r["C"] in r["C_search"]
    seen = []
    import train.svm as S
    orig = S._fit_binary
    monkeypatch.setattr(S, "_fit_binary", lambda x, y, C: seen.append(len(y)) or orig(x, y, C))
    fit_multilabel(x, labels, 1.0)
    assert seen == [90, 85, 90]


def test_folder_and_caltech_protocols():
    rng = np.random.default_rng(1)
    x, y = blobs(rng, 40, 4, spread=0.8)
    r = folder_classification(FS(x[::2], y[::2], list("abcd")), FS(x[1::2], y[1::2], list("abcd")))
    assert r["accuracy"] > 0.9 and r["mean_class_accuracy"] > 0.9
    x, y = blobs(rng, 45, 3, spread=1.5)
    r = caltech_classification(FS(x, y, list("abc")), splits=4, train_per_class=30,
                               test_per_class=50)
    assert len(r["splits"]) == 4 and [s["split"] for s in r["splits"]] == [0, 1, 2, 3]
    accs = [s["mean_class_accuracy"] for s in r["splits"]]
    assert r["mean_class_accuracy"] == pytest.approx(np.mean(accs))
    assert r["std"] == pytest.approx(np.std(accs, ddof=1)) and r["std"] > 0
