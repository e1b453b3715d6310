"""The paper's networks (paper Sec. 3.1.1, Table 1), fixed-size instances sharing one Params store,
summaries, checkpoints and weight files."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from minispp.storage.checkpoint import read_checkpoint
from nets import build, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def zf5():
    return build("zf5", num_classes=1000, spp=(6, 3, 2, 1), rng=np.random.default_rng(0))


def out_sizes(model, size, names):
    net = model.instance(batch=1, size=size)
    shapes = {layer.name: layer.out_shape for layer in net.layers}
    return [shapes[n][2:] for n in names]


def test_zf5_map_sizes_match_table_1(zf5):
    # conv1 96 7x7/2 + LRN + pool -> 55; conv2 256 5x5/2 + LRN + pool -> 13; conv3-5 13
    assert out_sizes(zf5, 224, ["pool1", "pool2", "conv3", "conv4", "conv5"]) == \
        [(55, 55), (13, 13), (13, 13), (13, 13), (13, 13)]
    assert out_sizes(zf5, 180, ["conv5"]) == [(10, 10)]          # Sec. 2.3
    net = zf5.instance(1, 224)
    assert [(l.name, l.out_shape[1]) for l in net.layers if l.name.startswith("conv")] == \
        [("conv1", 96), ("conv2", 256), ("conv3", 384), ("conv4", 384), ("conv5", 256)]


def test_convnet5_and_overfeat_map_sizes_match_table_1():
    m = build("convnet5", spp=None)
    assert out_sizes(m, 224, ["norm1", "pool2", "pool3", "conv4", "conv5", "pool5"]) == \
        [(55, 55), (27, 27), (13, 13), (13, 13), (13, 13), (6, 6)]
    for name, convs in (("overfeat5", 5), ("overfeat7", 7)):
        m = build(name, spp=None)
        names = ["norm1", "pool2"] + [f"conv{i}" for i in range(3, convs + 1)] + ["pool5"]
        assert out_sizes(m, 224, names) == [(36, 36), (18, 18)] + [(18, 18)] * (convs - 2) + [(6, 6)]
        assert m.instance(1, 224).layers[0].kernel == (7, 7)
        assert m.feature_stride == 12
    assert build("zf5", spp=None).feature_stride == 16


def test_spp_output_length_is_the_same_at_every_size(zf5):
    for size in [(224, 224), (180, 180), (427, 640)]:
        assert zf5.instance(1, size).layers[14].out_shape == (1, 12800)


def test_full_image_runs_forward_through_the_spp_net(zf5):
    net = zf5.instance(batch=1, size=(427, 640))
    scores = net.forward(np.random.default_rng(1).standard_normal((1, 3, 427, 640), dtype=np.float32))
    assert scores.shape == (1, 1000) and np.isfinite(scores).all()


def test_no_spp_net_refuses_a_size_without_6x6_pool5():
    m = build("zf5", spp=None, num_classes=10)
    assert m.instance(2, 224).out_shape == (2, 10)
    with pytest.raises(ValueError, match="needs a 6x6 pool5 .* 180x180 input gives 5x5"):
        m.instance(1, 180)


def test_image_smaller_than_the_receptive_field_is_refused(zf5):
    with pytest.raises(ValueError, match=r"zf5@20x20' with input \(1, 3, 20, 20\): MaxPool 'pool2': .* larger than"):
        zf5.instance(1, 20)


def test_summary_totals_match_an_independent_count(zf5):
    rows = zf5.instance(1, 224).summary()
    assert {"name", "out_shape", "params", "macs"} <= set(rows[0])
    # Table 1 by hand: (filters, channels, k, output side)
    convs = [(96, 3, 7, 110), (256, 96, 5, 27), (384, 256, 3, 13), (384, 384, 3, 13), (256, 384, 3, 13)]
    fcs = [(4096, 256 * 50), (4096, 4096), (1000, 4096)]
    params = sum(f * c * k * k + f for f, c, k, _ in convs) + sum(o * i + o for o, i in fcs)
    macs = sum(f * c * k * k * s * s for f, c, k, s in convs) + sum(o * i for o, i in fcs)
    assert sum(r["params"] for r in rows) == params == 77_037_672       # "about 77.0 M"
    assert sum(r["macs"] for r in rows) == macs                          # "1.22 G" at 224
    assert round(macs / 1e9, 2) == 1.22
    assert zf5.params.count() == params


def test_instances_share_one_store_and_one_sgd_step_shows_in_both():
    model = build("zf5", num_classes=10, rng=np.random.default_rng(0))
    n_params = len(model.params)
    net224 = model.instance(batch=2, size=(224, 224))
    net180 = model.instance(batch=2, size=(180, 180))
    assert len(model.params) == n_params == 16
    assert net224.layers[0].param("W") is net180.layers[0].param("W")
    assert model.instance(batch=2, size=(224, 224)) is net224           # cached
    rng = np.random.default_rng(1)
    x224 = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    x180 = rng.standard_normal((2, 3, 180, 180), dtype=np.float32)
    before = net224.forward(x224)
    model.params.zero_grad()
    net180.loss(x180, np.array([1, 7]))
    net180.backward()
    for p in model.params.values():
        p.value -= 10.0 * p.grad                                        # one SGD step
    after = net224.forward(x224)
    assert not np.allclose(before, after)
    fresh = build("zf5", num_classes=10, rng=np.random.default_rng(5))
    for p in model.params.values():
        fresh.params[p.name].value[...] = p.value
    np.testing.assert_array_equal(after, fresh.instance(2, 224).forward(x224))


def test_trunk_gives_conv5_maps_of_any_image(zf5):
    trunk = zf5.trunk(size=(688, 917))
    fmap = trunk.forward(np.zeros((1, 3, 688, 917), np.float32))
    assert fmap.shape == (1, 256, 42, 56)
    assert trunk.layers[-1].name == "relu5"


def test_parameter_init_is_seeded_and_lr_multipliers_are_stored():
    a = build("small", rng=np.random.default_rng(3))
    b = build("small", rng=np.random.default_rng(3))
    c = build("small", rng=np.random.default_rng(4))
    for p in a.params.values():
        np.testing.assert_array_equal(p.value, b.params[p.name].value)
    assert not np.array_equal(a.params["conv1.W"].value, c.params["conv1.W"].value)
    zf = build("zf5", rng=np.random.default_rng(0))
    assert zf.params["conv1.W"].value.std() == pytest.approx(np.sqrt(2 / 147), rel=0.05)    # He
    assert zf.params["conv4.W"].value.std() == pytest.approx(np.sqrt(2 / 3456), rel=0.05)
    assert zf.params["fc6.W"].value.std() == pytest.approx(0.005, rel=0.05)
    assert np.all(zf.params["fc6.b"].value == np.float32(0.1))
    assert (zf.params["conv2.b"].lr_mult, zf.params["conv2.b"].decay_mult) == (2.0, 0.0)
    assert (zf.params["conv2.W"].lr_mult, zf.params["conv2.W"].decay_mult) == (1.0, 1.0)


# -- checkpoints ----------------------------------------------------------------------------
def test_checkpoint_round_trip_is_bit_for_bit(tmp_path):
    model = build("zf5", num_classes=20, rng=np.random.default_rng(0))
    model.params["conv1.W"].state["momentum"] = np.full((96, 3, 7, 7), 0.5, np.float32)
    path = tmp_path / "zf5.h5"
    model.save(path, meta={"epoch": 3, "lr": 0.01})
    x = np.random.default_rng(1).standard_normal((1, 3, 200, 260), dtype=np.float32)
    loaded = load(path)
    assert loaded.definition == "zf5" and loaded.args == model.args
    assert loaded.meta == {"epoch": 3, "lr": 0.01}
    np.testing.assert_array_equal(loaded.params["conv1.W"].state["momentum"], 0.5)
    np.testing.assert_array_equal(model.instance(1, (200, 260)).forward(x),
                                  loaded.instance(1, (200, 260)).forward(x))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model = build("small", rng=np.random.default_rng(0))
    path = tmp_path / "small.h5"
    model.save(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.h5 cannot be read"):
        load(cut)
    with pytest.raises(ValueError, match="missing.h5 does not exist"):
        load(tmp_path / "missing.h5")


def test_corrupted_values_fail_the_checksum(tmp_path):
    model = build("small", rng=np.random.default_rng(0))
    path = tmp_path / "small.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        f["params"]["fc8.b"][0] += 1
    with pytest.raises(ValueError, match="small.h5: field params/fc8.b fails its checksum"):
        load(path)


def flip_bit(a, bit):
    """a copy of a float32 array (or scalar) with one bit of its first value flipped"""
    a = np.array(a, dtype=np.float32)
    a.reshape(-1).view(np.uint32)[0] ^= np.uint32(1 << bit)
    return a


def save_small_run(path):
    """a small model saved as training saves it: solver state, extras, meta"""
    model = build("small", rng=np.random.default_rng(0))
    for p in model.params.values():
        p.state["momentum"] = np.full_like(p.value, 0.25)
    rng = np.random.default_rng(1)
    extras = {"mean_image": rng.random((3, 8, 8)).astype(np.float32) * 255,
              "pixel_std": np.float32(60.5), "pca_eigvals": np.float32([900, 40, 5]),
              "pca_eigvecs": np.eye(3, dtype=np.float32)}
    model.save(path, meta={"epoch": 3, "lr": 0.01, "config": {"mean": "image"}}, extras=extras)
    return model


def set_dataset(name, value):
    def edit(f):
        f[name][...] = value
    return edit


def set_attr(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


CORRUPTIONS = {   # field -> an edit of the saved file that changes only that field
    "params/conv1.W": lambda f: set_dataset("params/conv1.W", flip_bit(f["params/conv1.W"][()], 30))(f),
    "state/fc6.W/momentum": lambda f: set_dataset("state/fc6.W/momentum",
                                                  flip_bit(f["state/fc6.W/momentum"][()], 3))(f),
    "extras/pixel_std": lambda f: set_dataset("extras/pixel_std", flip_bit(f["extras/pixel_std"][()], 23))(f),
    "extras/mean_image": lambda f: set_dataset("extras/mean_image", flip_bit(f["extras/mean_image"][()], 0))(f),
    "extras/pca_eigvecs": lambda f: set_dataset("extras/pca_eigvecs", np.eye(3, dtype=np.float32)[::-1])(f),
    "attrs/definition": set_attr("definition", "zf5"),
    "attrs/definition_args": set_attr("definition_args", '{"num_classes": 5, "spp": [3, 2, 1], "form": "appendix"}'),
    "attrs/meta": set_attr("meta", '{"epoch": 4, "lr": 0.01, "config": {"mean": "image"}}'),
    "attrs/minispp_version": set_attr("minispp_version", "9.9.9"),
    "attrs/checksum": set_attr("checksum", "0" * 64),
}


@pytest.mark.parametrize("field", sorted(CORRUPTIONS))
def test_every_loaded_field_is_checksummed_and_named_when_corrupt(tmp_path, field):
    path = tmp_path / "run.h5"
    save_small_run(path)
    loaded = load(path)                                        # intact: loads, every field
    assert loaded.meta["epoch"] == 3 and loaded.extras["pixel_std"] == np.float32(60.5)
    with h5py.File(path, "r+") as f:
        CORRUPTIONS[field](f)
    with pytest.raises(ValueError, match=f"run.h5: field {field} fails its checksum"):
        load(path)
    with pytest.raises(ValueError, match=f"field {field} fails"):
        read_checkpoint(path)


def test_a_removed_or_added_field_is_refused(tmp_path):
    path = tmp_path / "run.h5"
    save_small_run(path)
    with h5py.File(path, "r+") as f:
        del f["extras/pca_eigvals"]
    with pytest.raises(ValueError, match="run.h5: field extras/pca_eigvals is missing"):
        load(path)
    save_small_run(path)
    with h5py.File(path, "r+") as f:
        f["extras"].create_dataset("pixel_std2", data=np.float32(1))
    with pytest.raises(ValueError, match="run.h5: field extras/pixel_std2 has no checksum"):
        load(path)
    save_small_run(path)
    with h5py.File(path, "r+") as f:
        f.attrs["checksums"] = '{"params/conv1.W": '           # cut short
    with pytest.raises(ValueError, match="run.h5: its checksums attribute cannot be read"):
        load(path)


def test_checkpoints_without_field_checksums_still_load_with_a_warning(tmp_path):
    path = tmp_path / "old.h5"
    model = save_small_run(path)
    with h5py.File(path, "r+") as f:                          # as written before the change
        del f.attrs["checksums"]
    with pytest.warns(UserWarning, match="old.h5 was written before per-field checksums: its "
                                         "parameters are verified, its solver state, extras"):
        loaded = load(path)
    assert loaded.checksum == model_checksum(model)           # the identity is unchanged
    np.testing.assert_array_equal(loaded.params["conv1.W"].value, model.params["conv1.W"].value)
    with h5py.File(path, "r+") as f:                          # what it has is still verified
        f["params/fc8.b"][0] += 1
    with pytest.raises(ValueError, match="old.h5: parameter checksum mismatch"):
        load(path)


def model_checksum(model):
    from minispp.storage.checkpoint import checksum
    return checksum({p.name: p.value for p in model.params.values()})


def test_loading_another_architecture_is_refused(tmp_path):
    path = tmp_path / "small.h5"
    build("small", num_classes=4, rng=np.random.default_rng(0)).save(path)
    other = build("small", num_classes=5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"small.h5 holds small\(.*'num_classes': 4.*this model is small\(.*'num_classes': 5"):
        other.load_state(path)
    before = other.params["fc8.W"].value.copy()
    np.testing.assert_array_equal(other.params["fc8.W"].value, before)   # nothing half-loaded


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build("small", rng=np.random.default_rng(0))
    path = tmp_path / "ck.h5"
    model.save(path, meta={"epoch": 1})
    import minispp.storage.checkpoint as ckpt

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt, "checksum", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(path, meta={"epoch": 2})
    monkeypatch.undo()
    assert read_checkpoint(path).meta == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["ck.h5"]          # no temporary file left


def test_sigkill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "ck.h5"
    script = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from nets import build\n"
        "m = build('zf5', num_classes=10, rng=np.random.default_rng(0))\n"
        f"m.save({str(path)!r}, meta={{'i': 0}})\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        f"    m.save({str(path)!r}, meta={{'i': i}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while not any(n.startswith(".ck.h5.tmp") for n in os.listdir(tmp_path)):
            assert time.time() < deadline, "no save started"
            time.sleep(0.01)
        time.sleep(0.2)                       # inside a save of ~300 MB: kill it mid-write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert any(n.startswith(".ck.h5.tmp") for n in os.listdir(tmp_path))   # it died mid-write
    ck = read_checkpoint(path)                # verifies format and checksum
    assert ck.definition == "zf5" and ck.meta["i"] >= 0


# -- weight files --------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["npz", "h5"])
def test_weight_export_import_round_trip(tmp_path, ext):
    a = build("small", rng=np.random.default_rng(0))
    b = build("small", rng=np.random.default_rng(1))
    path = tmp_path / f"w.{ext}"
    a.export_weights(path)
    assert b.import_weights(path) == ([], [])
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(a.instance(2, 16).forward(x), b.instance(2, 16).forward(x))


def test_weight_import_checks_shapes_and_names(tmp_path):
    m = build("small", rng=np.random.default_rng(0))
    arrays = {p.name: p.value for p in m.params.values()}
    bad = dict(arrays, **{"conv2.W": np.zeros((5, 4, 5, 5), np.float32)})
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match=r"bad.npz: conv2.W has shape \(5, 4, 5, 5\), small needs \(5, 4, 3, 3\)"):
        m.import_weights(tmp_path / "bad.npz")
    partial = {k: v for k, v in arrays.items() if not k.startswith("fc8")}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(ValueError, match=r"missing \['fc8.W', 'fc8.b'\]"):
        m.import_weights(tmp_path / "partial.npz")
    assert m.import_weights(tmp_path / "partial.npz", strict=False) == (["fc8.W", "fc8.b"], [])
    with h5py.File(tmp_path / "grouped.h5", "w") as f:          # "conv1/W" names conv1.W
        for k, v in arrays.items():
            f.create_dataset(k.replace(".", "/"), data=v)
    assert m.import_weights(tmp_path / "grouped.h5") == ([], [])


def test_summary_command_prints_a_full_image_net():
    out = subprocess.run([sys.executable, "-m", "nets", "zf5", "--spp", "6,3,2,1", "--size", "427x640"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "(1, 256, 26, 39)" in out and "(1, 12800)" in out and "77,037,672" in out
    bad = subprocess.run([sys.executable, "-m", "nets", "zf5", "--spp", "none", "--size", "180"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "6x6 pool5" in bad.stderr


def test_params_is_a_mapping_of_names_to_param():
    from collections.abc import Mapping

    from minispp import Param
    model = build("small", num_classes=4, spp=(3, 2, 1), rng=np.random.default_rng(0))
    params = model.params
    assert isinstance(params, Mapping)
    assert list(params)[:2] == ["conv1.W", "conv1.b"] and "fc8.b" in params
    assert all(isinstance(p, Param) and p.name == n for n, p in params.items())
    assert [p.name for p in params.values()] == list(params)
    with pytest.raises(KeyError, match="no parameter 'conv9.W'"):
        params["conv9.W"]


def test_test_time_forwards_over_many_sizes_keep_memory_bounded():
    """A model caches a net per input size (MAX_CACHED of them): a test-time forward keeps no
    conv columns, LRN scales or ReLU outputs, and an evicted instance is freed at once, not
    at Python's next cycle collection (a layer's saved state refers back to it weakly)."""
    import gc
    import weakref

    from nets.model import MAX_CACHED
    model = build("small", num_classes=3, spp=(2, 1), rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    first = None
    gc.disable()
    try:
        for k in range(MAX_CACHED + 3):
            size = (40 + 2 * k, 44)
            x = rng.standard_normal((1, 3) + size).astype(np.float32)
            net = model.trunk(size)
            net.forward(x, train=False)
            for layer in net.layers:
                kept = [n for n, v in layer.saved._values.items() if v is not None]
                assert kept == [] or layer.argmax_layer, (layer.name, kept)
                assert "col" not in getattr(layer, "_scratch", {}), layer.name
            if first is None:
                first = [weakref.ref(layer) for layer in net.layers]
            del net
        assert len(model._instances) == MAX_CACHED
        assert all(ref() is None for ref in first)          # evicted and freed without gc
    finally:
        gc.enable()


def test_release_drops_every_activation_a_test_forward_kept_and_conv5_maps_release():
    """A test-time forward retains each lean and max-type layer's input (for a later
    backward); Net.release drops them, and the full-image paths (conv5_maps for detection)
    release the cached trunk, so a model's cached instances hold no activations."""
    from train.detection.windows import conv5_maps
    model = build("small", num_classes=3, spp=(2, 1), rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 3, 40, 44)).astype(np.float32)
    net = model.trunk((40, 44))
    net.forward(x, train=False)
    assert sum(layer._retained is not None for layer in net.layers) >= 3
    net.release()
    assert all(layer._retained is None and all(v is None for v in layer.saved._values.values())
               for layer in net.layers)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        net.layers[-1].backward(np.zeros(net.out_shape, np.float32))
    img = (np.random.default_rng(2).random((30, 36, 3)) * 255).astype(np.uint8)
    maps = conv5_maps(model, img, (48, 56), np.float32(120.0), 1 / 60)
    assert set(maps) == {48, 56}
    for key, inst in model._instances.items():
        assert all(layer._retained is None for layer in inst.layers), key


def test_the_window_pooler_keeps_no_map_and_a_bounded_number_of_layers():
    """The detector pools every image's windows from its own conv5 maps, whose shapes differ
    from image to image: the pooler keeps at most MAX_LAYERS WindowSPP layers and none of them
    retains a map (each kept the last map it pooled, so the SVM and box-regression stages
    held one map per image and scale: 885 MB at 300 images and 5 scales)."""
    from train.detection.windows import WindowPooler
    model = build("small", num_classes=3, spp=(2, 1), rng=np.random.default_rng(0))
    pooler = WindowPooler(model, (2, 1))
    rng = np.random.default_rng(3)
    for k in range(pooler.MAX_LAYERS + 5):
        h, w = 4 + k % 7, 5 + k // 7
        maps = {64: rng.standard_normal((1, 8, h, w)).astype(np.float32)}
        boxes = np.array([[0, 0, 30, 30], [10, 5, 60, 40]], np.float64)
        pooled, inverse = pooler.unique(maps, boxes, (64, 80))
        assert pooled.shape[1] == 8 * 5 and len(inverse) == 2
    assert len(pooler._layers) == pooler.MAX_LAYERS
    assert all(layer._retained is None and all(v is None for v in layer.saved._values.values())
               for layer in pooler._layers.values())


@pytest.mark.parametrize("make", [lambda: __import__("layers").Conv(out_channels=4, kernel=3, pad=1),
                                  lambda: __import__("layers").LRN(),
                                  lambda: __import__("layers").ReLU()], ids=["conv", "lrn", "relu"])
def test_a_lean_layer_keeps_only_its_input_at_test_time_and_still_backpropagates(make):
    from minispp import Params
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 7, 9))
    grads = []
    for train in (True, False):
        layer, params = make(), Params(np.float64)
        layer.setup(x.shape, params, rng=np.random.default_rng(1))
        y = layer.forward(x, train=train)
        if not train:
            assert all(v is None for v in layer.saved._values.values())
            assert layer._retained[0] is x
        dy = np.random.default_rng(2).standard_normal(y.shape)
        grads.append([layer.backward(dy)] + [p.grad.copy() for p in params.values()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
