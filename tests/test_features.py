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
from tests.helpers import save_small, wait_for_shards
from minispp.data.embedded import make_voc
from minispp.storage.feature_cache import CacheMismatch, CacheWriter, cache_info, read_cache
from minispp.data.voc import VOCDataset
from train.cli import main
from train.features.extract import (LayerTaps, UnreadableImage, _Spill, extract, input_shape,
                                    plan_batches, view_input)
from train.features.svm import (caltech_classification, fit_multilabel, folder_classification,
                       l2_normalize, validation_split, voc_classification)

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
    mean, pixel_scale = model.input_normalization()
    ds = VOCDataset(voc, "trainval")
    for i in (0, 9):
        x = view_input(ds.load(i)[0], "full", 48, mean, pixel_scale)[None]
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
import train.features.extract as F
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
        wait_for_shards(proc, b, 2)
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


def test_unreadable_image_is_an_error_or_flagged_when_skipping(ckpt, voc, tmp_path, capfd):
    import shutil
    copy = tmp_path / "voc"
    shutil.copytree(voc, copy)
    bad = copy / "JPEGImages" / "000016.jpg"            # the second test image
    bad.write_bytes(b"not a jpeg")
    out = {"fc6": str(tmp_path / "fc6.h5")}
    with pytest.raises(UnreadableImage, match="000016.jpg.*--skip-unreadable"):
        extract(ckpt, "voc", copy, "test", ["fc6"], 48, "full", out, progress=False, shard_size=4)
    assert not os.path.exists(out["fc6"])
    r = extract(ckpt, "voc", copy, "test", ["fc6"], 48, "full", out, progress=False, shard_size=4,
                skip_unreadable=True)               # resumes what the failed run wrote
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


# ---- class lists, missing images and bad arguments (issue 17) --------------------------------

def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def features_cmd(ckpt, voc, split, out, *extra):
    return ["features", "--checkpoint", ckpt, "--voc", str(voc), "--split", split, "--layer",
            "fc6", "--scale", "48", "--out", str(out), "--quiet", "--workers", "1", *extra]


def test_voc_split_missing_a_class_list_keeps_the_class(ckpt, voc, tmp_path, capsys):
    import shutil
    copy = tmp_path / "voc"
    shutil.copytree(voc, copy)
    full = VOCDataset(voc, "test")
    k = int(np.argmax((full.labels() == 1).sum(0)))     # a class present in the test images
    os.remove(copy / "ImageSets" / "Main" / f"{full.classes[k]}_test.txt")
    for split in ("trainval", "test"):
        assert main(features_cmd(ckpt, copy, split, tmp_path / f"{split}.h5")) == 0
    tr, te = read_cache(tmp_path / "trainval.h5"), read_cache(tmp_path / "test.h5")
    assert te.classes == tr.classes == full.classes     # the class is kept, in its place
    assert te.identity["classes"] == full.classes
    np.testing.assert_array_equal(te.labels, full.labels())  # from the XML where the list is missing
    capsys.readouterr()
    assert main(["svm", "--train", str(tmp_path / "trainval.h5"), "--test",
                 str(tmp_path / "test.h5"), "--C", "1"]) == 0
    assert f"{full.classes[k]}: AP" in capsys.readouterr().out


def write_folder(root, classes, n=3, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def folder_cmd(ckpt, root, split, out):
    return ["features", "--checkpoint", ckpt, "--folder", str(root), "--split", split,
            "--layer", "fc6", "--scale", "48", "--out", str(out), "--quiet", "--workers", "1"]


def test_folder_split_missing_a_class_is_indexed_by_the_training_classes(ckpt, tmp_path, capsys):
    write_folder(tmp_path / "d" / "train", ["a", "b", "c"], seed=0)
    write_folder(tmp_path / "d" / "val", ["a", "c"], seed=1)   # no 'b' in val
    for split in ("train", "val"):
        assert main(folder_cmd(ckpt, tmp_path / "d", split, tmp_path / f"{split}.h5")) == 0
    val = read_cache(tmp_path / "val.h5")
    assert val.classes == ["a", "b", "c"] and val.labels.tolist() == [0, 0, 0, 2, 2, 2]
    assert main(["svm", "--train", str(tmp_path / "train.h5"), "--test", str(tmp_path / "val.h5"),
                 "--C", "1"]) == 0
    # splits without a train/ folder: each has its own classes, and svm refuses to pair them
    write_folder(tmp_path / "e" / "one", ["a", "b", "c"], seed=0)
    write_folder(tmp_path / "e" / "two", ["a", "c"], seed=1)
    for split in ("one", "two"):
        assert main(folder_cmd(ckpt, tmp_path / "e", split, tmp_path / f"{split}.h5")) == 0
    capsys.readouterr()
    assert main(["svm", "--train", str(tmp_path / "one.h5"), "--test", str(tmp_path / "two.h5"),
                 "--C", "1"]) == 2
    err = one_line_error(capsys)
    assert "different class lists" in err and "only the training cache has ['b']" in err


def test_caches_written_before_class_lists_in_the_identity(ckpt, tmp_path, capsys):
    """Old caches (no class list in the identity) are paired only when their stored class
    lists agree; otherwise refused with the advice to extract again."""
    paths = []
    for name, classes in (("tr", ["x", "y", "z"]), ("te", ["x", "z"])):
        w = CacheWriter(tmp_path / f"{name}.h5", {"data": "folder", "layer": "fc6", "split": name},
                        ["i0", "i1", "i2", "i3"], [0, 1, 0, 1], classes, shard_size=4)
        w.write(0, np.random.default_rng(0).normal(size=(4, 5)), [True] * 4)
        w.finish()
        with h5py.File(w.path, "r+") as f:                 # as an older version wrote it
            ident = json.loads(f.attrs["identity"])
            del ident["classes"]
            f.attrs["identity"] = json.dumps(ident)
        paths.append(w.path)
    assert main(["svm", "--train", paths[0], "--test", paths[1], "--C", "1"]) == 2
    err = one_line_error(capsys)
    assert "different class lists" in err and "extract again" in err


def test_missing_voc_image_is_an_error_unless_skip_unreadable(ckpt, voc, tmp_path, capsys):
    import shutil
    copy = tmp_path / "voc"
    shutil.copytree(voc, copy)
    os.remove(copy / "JPEGImages" / "000016.jpg")      # the second test image
    out = tmp_path / "test.h5"
    assert main(features_cmd(ckpt, copy, "test", out)) == 2
    err = one_line_error(capsys)
    assert "000016.jpg" in err and "--skip-unreadable" in err
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".parts")
    assert main(features_cmd(ckpt, copy, "test", out, "--skip-unreadable")) == 0
    assert "1 unreadable" in capsys.readouterr().out
    fs = read_cache(out)
    assert fs.valid.tolist() == [i != 1 for i in range(8)] and fs.unreadable() == ["000016"]
    assert fs.provenance["skip_unreadable"] is True
    assert main(["cache", "info", str(out)]) == 0
    assert "1 unreadable (skipped, zero rows: 000016)" in capsys.readouterr().out
    assert main(features_cmd(ckpt, copy, "trainval", tmp_path / "trainval.h5")) == 0
    res = tmp_path / "r.json"
    capsys.readouterr()
    assert main(["svm", "--train", str(tmp_path / "trainval.h5"), "--test", str(out),
                 "--C", "1", "--json", str(res)]) == 0
    captured = capsys.readouterr()
    assert "leaving out 1 image(s) skipped as unreadable at extraction: 000016" in captured.err
    r = json.loads(res.read_text())
    assert r["test_skipped"] == ["000016"] and r["train_skipped"] == [] and r["test_images"] == 7


@pytest.mark.parametrize("extra, message", [
    (["--scale", "0"], "--scale"), (["--scale", "-48"], "--scale"), (["--scale", "48,0"], "--scale"),
    (["--batch", "0"], "--batch"), (["--batch", "-2"], "--batch"),
    (["--workers", "0"], "--workers"), (["--workers", "-1"], "--workers"),
])
def test_features_bad_numbers_are_refused_before_anything_is_written(ckpt, voc, tmp_path, capsys,
                                                                      extra, message):
    out = tmp_path / "c.h5"
    assert main(features_cmd(ckpt, voc, "test", out) + extra) == 2
    assert message in one_line_error(capsys)
    assert os.listdir(tmp_path) == []                     # no .parts folder to block a rerun


def test_features_never_overwrites_a_file_that_is_not_a_feature_cache(ckpt, voc, tmp_path, capsys):
    import shutil
    model = tmp_path / "model.h5"
    shutil.copy(ckpt, model)
    before = model.read_bytes()
    assert main(features_cmd(ckpt, voc, "test", model)) == 2
    assert "not a minispp feature cache" in one_line_error(capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(features_cmd(ckpt, voc, "test", notes)) == 2
    assert "refusing to overwrite" in one_line_error(capsys)
    assert model.read_bytes() == before and notes.read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["model.h5", "notes.txt"]


def test_unfinished_folder_without_shards_does_not_block_a_corrected_command(ckpt, voc, tmp_path):
    out = str(tmp_path / "c.h5")
    os.makedirs(out + ".parts")                            # left by an older refused command
    with open(os.path.join(out + ".parts", "identity.json"), "w") as fh:
        json.dump({"identity": {"scale": 0, "layer": "fc6"}, "shard_size": 64}, fh)
    r = extract(ckpt, "voc", voc, "test", ["fc6"], 48, "full", {"fc6": out}, progress=False)
    assert r["computed"] == 8 and read_cache(out).identity["scale"] == 48
    assert not os.path.exists(out + ".parts")


def test_cache_info_on_parts_and_damaged_shard(ckpt, voc, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "c.h5")

    def stop(self):
        raise RuntimeError("killed before the merge")
    monkeypatch.setattr(CacheWriter, "finish", stop)
    with pytest.raises(RuntimeError):
        extract(ckpt, "voc", voc, "test", ["fc6"], 48, "full", {"fc6": out}, progress=False,
                shard_size=3, workers=1)
    monkeypatch.undo()
    assert main(["cache", "info", out + ".parts"]) == 0
    assert "UNFINISHED" in capsys.readouterr().out
    shard = os.path.join(out + ".parts", "shard-000000003.h5")
    with open(shard, "r+b") as fh:                         # truncated, as a full disk leaves it
        fh.truncate(100)
    assert main(features_cmd(ckpt, voc, "test", out)) == 2
    err = one_line_error(capsys)
    assert shard in err and "delete" in err
    os.remove(shard)
    with open("/proc/sys/kernel/pid_max") as fh:            # a merge killed earlier left this
        stale = tmp_path / f".c.h5.tmp{int(fh.read()) + 1}"
    stale.write_bytes(b"x" * 1000)
    assert main(features_cmd(ckpt, voc, "test", out)) == 0
    assert read_cache(out).valid.all() and not stale.exists()
    os.makedirs(tmp_path / "x.h5.parts")                    # no identity.json
    assert main(["cache", "info", str(tmp_path / "x.h5.parts")]) == 2
    assert "identity.json" in one_line_error(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--C", "0"], "--C"), (["--C", "-1"], "--C"), (["--C", "nan"], "--C"),
    (["--splits", "0"], "--splits"), (["--json", "/nonexistent-folder/r.json"], "does not exist"),
])
def test_svm_bad_arguments_are_refused(tmp_path, capsys, extra, message):
    w = CacheWriter(tmp_path / "c.h5", {"data": "caltech"}, ["a", "b"], [0, 1], ["x", "y"])
    w.write(0, np.ones((2, 3)), [True, True])
    w.finish()
    assert main(["svm", "--train", w.path] + extra) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--batch", "0"], "--batch"), (["--workers", "-1"], "--workers"),
    (["--test-split", "trainval"], "both 'trainval'"),
])
def test_features_compare_bad_arguments_are_refused(ckpt, voc, tmp_path, capsys, extra, message):
    out = tmp_path / "cmp"
    assert main(["features-compare", "--checkpoint", ckpt, "--voc", str(voc), "--out", str(out),
                 "--quiet"] + extra) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_svm_refuses_the_same_images_for_training_and_testing(tmp_path, capsys):
    w = CacheWriter(tmp_path / "c.h5", {"data": "folder"}, ["a", "b"], [0, 1], ["x", "y"])
    w.write(0, np.ones((2, 3)), [True, True])
    w.finish()
    assert main(["svm", "--train", w.path, "--test", w.path]) == 2
    assert "hold the same images" in one_line_error(capsys)



# ---- full-image features in batches of equal input shapes (issue 15, item 3) ---------------

# image sizes (h, w) in the split's order; at s = 48 their inputs are 48x62 (6 images), 62x48
# (3), 48x65 (3), 65x48 (1) and 48x79 (1), equal shapes never all in one shard of 3
MIXED = [(40, 52), (52, 40), (44, 60), (40, 52), (61, 45), (52, 40), (40, 52), (44, 60),
         (40, 52), (52, 40), (40, 52), (40, 66), (44, 60), (40, 52)]
# batched and one-at-a-time features agree to this fraction of the layer's largest value:
# the convolutions' GEMMs sum in another order when the batch size changes, fc6 and fc7 run
# one image at a time (LayerTaps). Measured: 2.4e-8 (spp) and 4.8e-8 (fc6) for the small net
# here, under 1e-6 for ZF-5's spp and fc7 (benchmarks/bench_features.py)
BATCH_TOL = 4e-6


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A class-folder split (one class) of the MIXED sizes, random pixels."""
    from PIL import Image
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    os.makedirs(root / "train" / "x")
    for k, (h, w) in enumerate(MIXED):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "train" / "x" / f"{k:02d}.png")
    return root


def spy_batches(monkeypatch):
    """The (B, 3, h, w) shapes of every forward pass of LayerTaps, in order."""
    seen = []
    orig = LayerTaps.__call__

    def spy(self, net, x):
        seen.append(x.shape)
        return orig(self, net, x)
    monkeypatch.setattr(LayerTaps, "__call__", spy)
    return seen


def assert_same_features(got, ref):
    for layer in ref:
        tol = BATCH_TOL * np.abs(ref[layer]).max()
        np.testing.assert_allclose(got[layer], ref[layer], rtol=0, atol=tol, err_msg=layer)
        assert np.abs(ref[layer][0] - ref[layer][3]).max() > 1000 * tol   # rows are told apart


def test_plan_batches_groups_equal_shapes_across_shards_and_writes_in_row_order():
    shapes = {i: "C" if i == 5 else "AB"[i % 2] for i in range(10)}
    todo = [(0, 3), (3, 6), (6, 9), (9, 10)]
    # a shape's images of the next shards run in consecutive batches; shards written in order
    assert plan_batches(todo, shapes, 3) == [
        ("run", [0, 2, 4]), ("run", [6, 8]), ("run", [1, 3, 7]), ("run", [9]), ("write", (0, 3)),
        ("run", [5]), ("write", (3, 6)), ("write", (6, 9)), ("write", (9, 10))]
    # looking 2 shards ahead: the last batch is filled from further on (7 for 1 and 3)
    assert plan_batches(todo, shapes, 3, ahead=2) == [
        ("run", [0, 2, 4]), ("run", [1, 3, 7]), ("write", (0, 3)), ("run", [5]),
        ("write", (3, 6)), ("run", [6, 8]), ("write", (6, 9)), ("run", [9]), ("write", (9, 10))]
    # a resumed run: only the pending shards' images, still grouped across them
    assert plan_batches([(0, 3), (6, 9)], shapes, 3) == [
        ("run", [0, 2, 6]), ("run", [8]), ("run", [1, 7]), ("write", (0, 3)), ("write", (6, 9))]
    one = plan_batches(todo, shapes, 1, ahead=1)
    assert one == [("run", [0]), ("run", [2]), ("run", [1]), ("write", (0, 3)), ("run", [3]),
                   ("run", [4]), ("run", [5]), ("write", (3, 6)), ("run", [6]), ("run", [8]),
                   ("run", [7]), ("write", (6, 9)), ("run", [9]), ("write", (9, 10))]
    for batch, ahead in ((1, 8), (2, 1), (3, 3), (4, 8)):       # each image once, one shape
        steps = plan_batches(todo, shapes, batch, ahead)
        runs = [r for k, r in steps if k == "run"]
        assert sorted(i for r in runs for i in r) == list(range(10))
        assert all(len(r) <= batch and len({shapes[i] for i in r}) == 1 for r in runs)
        assert [w for k, w in steps if k == "write"] == todo


def test_input_shape_from_the_header_matches_the_view(tmp_path):
    from PIL import Image
    from minispp.data.imagefolder import load_rgb
    exif = Image.Exif()
    exif[0x0112] = 6                                    # stored on its side: shown 70 x 40
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")

    class Files:
        samples = [(str(tmp_path / "r.jpg"), 0), (str(tmp_path / "bad.jpg"), 0)]
    full = view_input(load_rgb(Files.samples[0][0]), "full", 48, 0.0).shape[1:]
    assert input_shape(Files, 0, "full", 48) == full == (84, 48)
    assert input_shape(Files, 0, "warp", 48) == (48, 48)
    assert input_shape(Files, 1, "full", 48) is None


def test_spill_gives_back_the_rows_bit_for_bit_and_reuses_slots(tmp_path):
    spill = _Spill(str(tmp_path / "new"))
    rows = {i: [np.random.default_rng(i).normal(size=5).astype(np.float32),
                np.full(3, i, np.float32)] for i in range(4)}
    for i in range(3):
        spill.put(i, rows[i])
    got = spill.take(1)
    assert 1 not in spill and 0 in spill
    spill.put(3, rows[3])                               # takes the freed slot
    assert spill.used == 3
    for i, v in [(1, got), (0, spill.take(0)), (3, spill.take(3)), (2, spill.take(2))]:
        assert all(np.array_equal(a, b) for a, b in zip(v, rows[i]))
    spill.close()
    assert os.listdir(tmp_path / "new") == []           # the file has no name


def test_full_view_batches_equal_shapes_across_the_split_with_the_same_features(
        ckpt, mixed, tmp_path, monkeypatch):
    seen = spy_batches(monkeypatch)
    feats, runs = {}, {}
    for b in (1, 4):
        del seen[:]
        outs = {k: str(tmp_path / f"b{b}-{k}.h5") for k in ("spp", "fc6")}
        r = extract(ckpt, "folder", mixed, "train", list(outs), 48, "full", outs, batch=b,
                    workers=1, progress=False, shard_size=3)
        assert r["computed"] == 14
        feats[b] = {k: read_cache(p).features for k, p in outs.items()}
        runs[b] = sorted(s for s in seen if s[2:] != (48, 48))   # less the shape probe
    # one forward pass per 4 images of a shape, wherever they are in the split
    assert runs[4] == sorted([(4, 3, 48, 62), (2, 3, 48, 62), (3, 3, 62, 48), (3, 3, 48, 65),
                              (1, 3, 65, 48), (1, 3, 48, 79)])
    assert len(runs[1]) == 14 and {s[0] for s in runs[1]} == {1}
    assert_same_features(feats[4], feats[1])
    assert read_cache(tmp_path / "b4-spp.h5").ids == [f"x/{k:02d}.png" for k in range(14)]


def test_batched_extraction_writes_shards_in_order_and_resumes(ckpt, mixed, tmp_path, monkeypatch):
    out = {"spp": str(tmp_path / "spp.h5")}
    written = []
    orig = CacheWriter.write

    def stop_at_the_third(self, start, features, valid):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        written.append(start)
        return orig(self, start, features, valid)
    monkeypatch.setattr(CacheWriter, "write", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        extract(ckpt, "folder", mixed, "train", ["spp"], 48, "full", out, batch=4, workers=1,
                progress=False, shard_size=3)
    monkeypatch.undo()
    assert written == [0, 3]                            # in the cache's row order
    assert sorted(os.listdir(tmp_path)) == ["spp.h5.parts"]   # no spill file left behind
    assert sorted(os.listdir(out["spp"] + ".parts")) == [
        "identity.json", "shard-000000000.h5", "shard-000000003.h5"]
    seen = spy_batches(monkeypatch)
    r = extract(ckpt, "folder", mixed, "train", ["spp"], 48, "full", out, batch=4, workers=1,
                progress=False, shard_size=3)
    assert r["computed"] == 8 and sum(s[0] for s in seen if s[2:] != (48, 48)) == 8
    ref = {"spp": str(tmp_path / "ref.h5")}
    extract(ckpt, "folder", mixed, "train", ["spp"], 48, "full", ref, batch=1, workers=1,
            progress=False, shard_size=3)
    assert_same_features({"spp": read_cache(out["spp"]).features},
                         {"spp": read_cache(ref["spp"]).features})


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
    import train.features.svm as S
    orig = S._fit_binary
    monkeypatch.setattr(S, "_fit_binary", lambda r, i, y, C: seen.append(len(y)) or orig(r, i, y, C))
    fit_multilabel(S.Rows(x), labels, 1.0)
    assert seen == [90, 85, 90]


def test_svms_are_liblinears_one_vs_rest():
    """`minispp svm`'s SVMs (own dual coordinate descent) against scikit-learn's LinearSVC on
    the same l2-normalized rows: the same decision values to solver tolerance."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    import train.features.svm as S
    rng = np.random.default_rng(4)
    x, y = blobs(rng, 25, 4, spread=1.2)
    rows, xn = S.Rows(x), S.l2_normalize(x).astype(np.float64)
    assert np.array_equal(x, blobs(np.random.default_rng(4), 25, 4, spread=1.2)[0])   # not scaled in place
    for C in (0.1, 1.0):
        ours = S.fit_multiclass(rows, y, C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = LinearSVC(C=C, dual=True, max_iter=20000, random_state=0).fit(xn, y)
        s, sr = rows.scores(ours), ref.decision_function(xn)
        assert np.abs(s - sr).max() < 2e-3 * np.abs(sr).max()
        assert (ours.labels(s) == ref.predict(xn)).mean() > 0.98
    two = S.fit_multiclass(rows, np.minimum(y, 1), 1.0)           # two classes: one SVM
    assert two.coef.shape[0] == 1 and set(two.predict(xn)) <= {0, 1}


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
