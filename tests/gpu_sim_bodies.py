"""The layers' GPU bodies against their CPU bodies, and a whole net's GPU path against its CPU
path, under Numba's CUDA simulator with the simulated device (minispp.backend.simulate_gpu:
NumPy arrays marked as device arrays stand in for CuPy, the numba.cuda kernels run in the
simulator). Tiny shapes: the simulator runs every CUDA thread as Python.

Not collected by a plain `pytest tests/`: tests/test_gpu_bodies.py runs this file in its own
process with NUMBA_ENABLE_CUDASIM=1 and reports each check. By hand:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/gpu_sim_bodies.py

What is compared: every layer's output, input gradient and parameter gradients (max-type
layers exactly, argmax routing included; conv, LRN and the rest to float32 / float64
rounding), each after a check that the GPU body really ran (its results are device arrays);
the SGD update; a net conv-relu-lrn-pool-conv-relu-spp-fc-relu-dropout-fc-softmax (nets'
"small" model) whose loss, every parameter gradient and the parameters after SGD steps agree
on the two paths; checkpoints written from the GPU and loaded on either device.

They can fail: the `test_detects_*` checks run a broken body or kernel through the same
comparisons, and MINISPP_GPU_SIM_BREAK=name[,name] swaps one in for the whole run
(tests/test_gpu_bodies.py shows the run then fails): a kernel name of tests/gpu_sim_checks.py
(spp_forward, maxpool_backward, lrn_forward, im2col, col2im, ...) or a body of BODY_BREAKS.
"""
import os

import numpy as np
import pytest
from numba.core import config

if not config.ENABLE_CUDASIM:
    raise RuntimeError("tests/gpu_sim_bodies.py runs under Numba's CUDA simulator only: set "
                       "NUMBA_ENABLE_CUDASIM=1 before numba is imported "
                       "(tests/test_gpu_bodies.py does)")

# read here, and hidden from tests/gpu_sim_checks.py (imported below for its broken kernels),
# which would apply it to its own table of kernels
_BREAK = os.environ.pop("MINISPP_GPU_SIM_BREAK", "")

import nets  # noqa: E402
from layers import FC, Conv, Dropout, ReLU, SoftmaxLoss  # noqa: E402
from minispp import Params, backend  # noqa: E402
from minispp.backend import SIMULATED, get_array_module, to_numpy  # noqa: E402
from minispp.kernels.gpu import im2col as gpu_im2col  # noqa: E402
from minispp.kernels.gpu import lrn as gpu_lrn  # noqa: E402
from minispp.kernels.gpu import maxpool as gpu_pool  # noqa: E402
from minispp.kernels.gpu import sgd as gpu_sgd  # noqa: E402
from minispp.kernels.gpu import spp as gpu_spp  # noqa: E402
from minispp.storage.checkpoint import read_checkpoint  # noqa: E402
from tests.gpu_parity import (DTYPES, LAYER_CASES, layer_case, layer_mismatches,  # noqa: E402
                              net_mismatches, net_run, sgd_mismatches, values,
                              window_spp_mismatches)
from tests.gpu_sim_checks import BROKEN as BROKEN_KERNELS  # noqa: E402

backend.simulate_gpu()

KERNEL_MODULES = {"maxpool_forward": gpu_pool, "maxpool_backward": gpu_pool,
                  "max_scatter_backward": gpu_pool, "spp_forward": gpu_spp,
                  "spp_backward": gpu_spp, "lrn_forward": gpu_lrn, "lrn_backward": gpu_lrn,
                  "im2col": gpu_im2col, "col2im": gpu_im2col}


# ---------------------------------------------------------------------------- broken bodies

def _relu_backward_passes_everything(self, dy, propagate_down=True):
    return dy.copy()


def _dropout_fresh_mask(self, x, train=True):
    """Draws its own mask on the device: not the CPU body's."""
    xp = get_array_module(x)
    keep = xp.asarray(np.random.default_rng(99).random(x.shape) >= self.ratio)
    self.mask = to_numpy(keep) / (1.0 - self.ratio)
    return x * xp.asarray(self.mask.astype(x.dtype))


_CONV_FORWARD_GPU = Conv._forward_gpu


def _conv_forward_no_bias(self, x, train=True):
    """Forgets the bias."""
    y = _CONV_FORWARD_GPU(self, x, train)
    return y - self.value_as("b", x.dtype).reshape(1, -1, 1, 1)


BODY_BREAKS = {
    "relu_backward": (ReLU, "_backward_gpu", _relu_backward_passes_everything),
    "dropout_forward": (Dropout, "_forward_gpu", _dropout_fresh_mask),
    "conv_forward": (Conv, "_forward_gpu", _conv_forward_no_bias),
}


def broken_kernel(name):
    """The broken launcher `name` of tests/gpu_sim_checks.py, callable where the layers look
    the real one up (the kernel module's attribute). The broken variants call the real
    launcher through that attribute, on arrays they made with NumPy: while one runs, the
    attribute is the real launcher, given those arrays marked as device arrays."""
    module = KERNEL_MODULES[name]
    real, bad = getattr(module, name), BROKEN_KERNELS[name]

    def on_device(*args):
        return real(*(a.view(backend.SimulatedDeviceArray)
                      if type(a) is np.ndarray and a.ndim > 0 else a for a in args))

    def call(*args):
        setattr(module, name, on_device)
        try:
            return bad(*args)
        finally:
            setattr(module, name, call)
    return call


def broken(name):
    """A MonkeyPatch with the broken body or kernel `name` swapped in (undo() restores)."""
    mp = pytest.MonkeyPatch()
    if name in BODY_BREAKS:
        cls, attr, fn = BODY_BREAKS[name]
        mp.setattr(cls, attr, fn)
    else:
        mp.setattr(KERNEL_MODULES[name], name, broken_kernel(name))
    return mp


for _name in filter(None, _BREAK.split(",")):
    broken(_name.strip())            # for the whole run (KeyError names an unknown one)


# ---------------------------------------------------------------------------- layer cases

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_gpu_body(name, dtype):
    assert not layer_case(name, dtype)


@pytest.mark.parametrize("name", ["conv-k3s2p1", "fc"])
def test_layer_gpu_body_without_input_gradient(name):
    """propagate_down=False (a net's first layer): no dx, the same parameter gradients."""
    assert not layer_case(name, np.float32, propagate_down=False)


@pytest.mark.parametrize("name", ["pool-3s2-ceil", "spp-3-2-1"])
def test_backward_after_a_test_mode_forward(name):
    """A max-type layer's test-mode forward keeps no argmax: backward re-runs the forward in
    train mode (Layer.backward), on the GPU body as on the CPU one."""
    assert not layer_case(name, np.float32, train=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_window_spp_gpu_body(dtype):
    assert not window_spp_mismatches(dtype)


def test_window_spp_gpu_body_pixel_windows():
    assert not window_spp_mismatches(np.float32, feature_stride=16)


def test_window_spp_is_one_launch(monkeypatch):
    """R windows, every level: one forward launch, one zeroing and one backward launch."""
    from minispp.kernels.gpu import _launch
    launched = []
    real = _launch.launch

    def counting(kernel, total, *args):
        launched.append(kernel.py_func.__name__)
        return real(kernel, total, *args)
    monkeypatch.setattr(gpu_spp, "launch", counting)
    assert not window_spp_mismatches(np.float32)
    assert launched == ["_spp_forward", "_zero3", "_spp_backward"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_softmax_loss_gpu_body(dtype):
    scores = values((4, 5), dtype)
    labels = np.array([0, 4, 2, 2])
    assert not layer_mismatches(lambda: SoftmaxLoss(), scores, (labels,))


def test_softmax_loss_gpu_body_refuses_bad_labels():
    layer = SoftmaxLoss()
    with pytest.raises(ValueError, match="label 5 in row 1 is outside"):
        layer.forward(SIMULATED.asarray(values((2, 5), np.float32)), np.array([0, 5]))


def test_gpu_bodies_refuse_host_arrays():
    """The simulated device is as strict as CuPy: a host array mixed into a GPU body's op,
    or handed to a kernel beside device arrays, is a TypeError; so the checks above show the
    bodies keep their data on the device."""
    params = Params(np.float32)
    fc = FC(out_features=2)
    fc.setup((2, 3), params, rng=np.random.default_rng(0))       # parameters left on the host
    with pytest.raises(TypeError, match="host .NumPy. array"):
        fc.forward(SIMULATED.asarray(values((2, 3), np.float32)))
    x = SIMULATED.asarray(values((1, 1, 4, 4), np.float32))
    with pytest.raises(TypeError, match="GPU kernel"):
        gpu_pool.maxpool_forward(x, 2, 2, 2, 2, 0, 0, np.empty((1, 1, 2, 2), np.float32),
                                 SIMULATED.empty((1, 1, 2, 2), np.int32), True)


# ---------------------------------------------------------------------------- SGD

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sgd_on_the_device(dtype):
    assert not sgd_mismatches(dtype)


# ---------------------------------------------------------------------------- the whole net

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_whole_net_gpu_path_matches_the_cpu_path(dtype):
    assert not net_mismatches(dtype)


def test_a_gpu_net_fed_host_arrays_answers_on_the_host():
    """The net is the device boundary: a host batch goes to the device, every layer runs its
    GPU body, and the scores, the features of a named layer and the image gradient come back
    as host arrays equal to the CPU net's."""
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float64)
    got = {}
    for device in ("cpu", "gpu"):
        model = nets.build("small", num_classes=3, spp=(3, 2, 1), rng=np.random.default_rng(0),
                           dtype=np.float64, device=device)
        net = model.instance(batch=2, size=(16, 16))
        scores = net.forward(x, train=False)
        feats = net.outputs(x, ["relu2"])["relu2"]
        net.loss(x, np.array([1, 2]))
        dx = net.backward(input_grad=True)
        assert all(type(a) is np.ndarray for a in (scores, feats, dx)), device
        inner = net.layers[net.index("relu2")].saved.y
        assert (get_array_module(inner) is SIMULATED) == (device == "gpu")
        got[device] = (scores, feats, dx)
    for name, g, c in zip(("scores", "relu2", "dx"), got["gpu"], got["cpu"]):
        assert np.allclose(g, c, rtol=1e-11, atol=1e-13), name


def test_device_batches_put_the_images_on_the_device():
    """The loader's batches on the GPU device: x copied there, labels and indices left on the
    host, every batch in order (the pinned, overlapped copy itself needs CuPy streams: it is
    checked by tests/test_gpu.py on a GPU)."""
    from minispp.data.device_feed import device_batches
    batches = [(b, np.full((2, 3, 4, 4), b, np.float32), np.array([b, 1]), [10 + b, 20 + b])
               for b in range(3)]
    got = list(device_batches(iter(batches), "gpu"))
    assert [g[0] for g in got] == [0, 1, 2]
    for (b, x, labels, ids), want in zip(got, batches):
        assert get_array_module(x) is SIMULATED and np.array_equal(to_numpy(x), want[1])
        assert labels is want[2] and ids is want[3]


def test_detector_head_on_the_gpu(tmp_path):
    """A detector of a GPU model keeps its fc head on the GPU: initialised from the model's
    fc6/fc7, its fc7 features and softmax scores of host windows equal the CPU detector's;
    saved and loaded back onto the GPU (use_device, as --device gpu does), the same."""
    from tests.helpers import save_small
    from train.detection.detector import Detector, load_detector
    ckpt = save_small(tmp_path / "small.h5")
    pooled = np.random.default_rng(4).standard_normal((5, 70)).astype(np.float32)
    out = {}
    for device in ("cpu", "gpu"):
        det = Detector(nets.load(ckpt, device=device), ["a", "b"],
                       {"scales": (64,), "svm_scales": ((64,),), "seed": 0})
        det.init_head_from_model()
        assert det.head_params.device == device
        out[device] = (det.fc7(pooled, batch=4), det.softmax_scores(pooled, batch=4))
    det.svm_w, det.svm_b = np.ones((2, det.feature_dim), np.float32), np.zeros(2, np.float32)
    det.keep_scorer((64,))
    det.save(str(tmp_path / "detector.h5"))
    old = backend._CHOSEN
    try:
        backend.use_device("gpu")
        again = load_detector(str(tmp_path))
    finally:
        backend._CHOSEN = old
    assert again.model.device == "gpu" and again.head_params.device == "gpu"
    for got in (out["gpu"], (again.fc7(pooled, batch=4), again.softmax_scores(pooled, batch=4))):
        for g, c in zip(got, out["cpu"]):
            assert type(g) is np.ndarray and np.allclose(g, c, rtol=2e-5, atol=2e-6)


def test_detector_window_pooling_on_the_gpu(monkeypatch):
    """The detector's pooler of a GPU model pools host conv5 maps on the device (WindowSPP's
    GPU body) and returns host features equal to the CPU pooler's, repeated windows included."""
    from layers import WindowSPP
    from train.detection.windows import WindowPooler
    maps = {s: values((1, 5, h, w), np.float32, "ties", seed=s)
            for s, h, w in ((48, 3, 4), (64, 4, 5))}
    boxes = np.array([[0, 0, 40, 30], [3, 2, 60, 50], [0, 0, 40, 30], [10, 5, 20, 15]])
    got = {}
    for device in ("cpu", "gpu"):
        model = nets.build("small", num_classes=2, spp=(3, 2, 1), device=device)
        pooler = WindowPooler(model, model.spp)
        with monkeypatch.context() as mp:
            if device == "gpu":                 # the CPU body must not run
                mp.setattr(WindowSPP, "_forward_cpu", None)
            got[device] = pooler.unique(maps, boxes, (48, 60))
    assert type(got["gpu"][0]) is np.ndarray and len(got["gpu"][0]) == 3
    assert np.array_equal(got["gpu"][0], got["cpu"][0])
    assert np.array_equal(got["gpu"][1], got["cpu"][1])


def test_command_line_features_with_device_gpu(tmp_path, capsys):
    """`minispp features --device gpu` end to end (the command line's device choice, the
    checkpoint loaded onto the device, the net's host/device boundary, the cache written from
    host arrays): the same features as `--device cpu`."""
    from minispp.data.embedded import make_voc
    from minispp.storage.feature_cache import read_cache
    from tests.helpers import save_small
    from train.cli import main
    voc = make_voc(tmp_path / "voc", seed=0, trainval=1, test=1)
    ckpt = save_small(tmp_path / "small.h5")
    feats = {}
    old = backend._CHOSEN
    try:
        for device in ("cpu", "gpu"):
            out = str(tmp_path / f"{device}.h5")
            assert main(["features", "--checkpoint", ckpt, "--voc", str(voc), "--split", "test",
                         "--layer", "fc6", "--scale", "32", "--view", "full", "--out", out,
                         "--quiet", "--workers", "1", "--device", device]) == 0, \
                capsys.readouterr().err
            assert backend.device() == device
            feats[device] = read_cache(out)
    finally:
        backend._CHOSEN = old
    cpu, gpu = feats["cpu"], feats["gpu"]
    assert cpu.features.shape == gpu.features.shape == (1, 8)
    assert np.allclose(gpu.features, cpu.features, rtol=2e-5, atol=2e-6)


def test_command_line_detect_with_device_gpu(tmp_path, capsys):
    """`minispp detect --device gpu` end to end on an untrained detector of the small net:
    proposals on the host; conv5, window pooling and the fc head on the device; the same
    report (proposals, detections, their scores, the best window's cells) and the same
    pictures as `--device cpu`."""
    from PIL import Image

    from tests.helpers import save_small
    from train.cli import main
    from train.detection.detector import Detector
    det = Detector(nets.load(save_small(tmp_path / "small.h5")), ["a", "b"],
                   {"scales": (32,), "svm_scales": ((32,),), "proposals": 30, "seed": 0})
    rng = np.random.default_rng(0)
    det.svm_w = rng.standard_normal((2, det.feature_dim)).astype(np.float32)
    det.svm_b = np.zeros(2, np.float32)
    det.keep_scorer((32,))
    os.makedirs(tmp_path / "det")
    det.save(str(tmp_path / "det" / "detector.h5"))
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    lines = {}
    old = backend._CHOSEN
    try:
        for device in ("cpu", "gpu"):
            assert main(["detect", str(tmp_path / "x.png"), "--model", str(tmp_path / "det"),
                         "--out", str(tmp_path / device), "--device", device]) == 0, \
                capsys.readouterr().err
            lines[device] = capsys.readouterr().out.replace(str(tmp_path / device), "OUT")
    finally:
        backend._CHOSEN = old
    assert lines["gpu"] == lines["cpu"] and "30 proposals" in lines["cpu"], lines
    for picture in ("x-detections.png", "x-projection.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "gpu" / picture)),
                              np.asarray(Image.open(tmp_path / "cpu" / picture)))


def test_checkpoints_from_the_gpu_load_on_either_device(tmp_path):
    """Written from device parameters as host arrays; loaded onto the GPU or the CPU, the
    same values; a loaded GPU model computes the CPU model's loss."""
    model, _ = net_run("gpu", np.float32, steps=1)
    path = str(tmp_path / "gpu.h5")
    model.save(path)
    ck = read_checkpoint(path)
    assert all(type(v) is np.ndarray for v in ck.params.values())
    assert all(type(v) is np.ndarray for s in ck.state.values() for v in s.values())
    on_cpu, on_gpu = nets.load(path), nets.load(path, device="gpu")
    assert on_cpu.device == "cpu" and on_gpu.device == "gpu"
    for name in model.params:
        want = to_numpy(model.params[name].value)
        assert type(on_cpu.params[name].value) is np.ndarray
        assert get_array_module(on_gpu.params[name].value) is SIMULATED
        assert np.array_equal(on_cpu.params[name].value, want)
        assert np.array_equal(to_numpy(on_gpu.params[name].value), want)
        assert np.array_equal(to_numpy(on_gpu.params[name].state["momentum"]),
                              ck.state[name]["momentum"])
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    losses = [m.instance(2, (16, 16)).loss(m.xp.asarray(x), np.array([0, 2]), train=False)
              for m in (on_cpu, on_gpu)]
    assert np.isclose(losses[0], losses[1], rtol=1e-5)
    on_gpu.to("cpu")
    assert type(on_gpu.params["fc6.W"].value) is np.ndarray


# ---------------------------------------------------------------------------- the checks fail

@pytest.mark.parametrize("name,case", [("relu_backward", "relu"),
                                       ("dropout_forward", "dropout"),
                                       ("conv_forward", "conv-k3s2p1"),
                                       ("maxpool_backward", "pool-3s2-ceil"),
                                       ("spp_forward", "spp-3-2-1"),
                                       ("lrn_forward", "lrn-5"),
                                       ("col2im", "conv-k3s2p1")])
def test_detects_broken_body_or_kernel(name, case):
    mp = broken(name)
    try:
        found = layer_case(case, np.float64)
    finally:
        mp.undo()
    assert found, f"a broken {name} went unnoticed on {case}"


def test_detects_broken_sgd():
    real = gpu_sgd.sgd_momentum_update

    def no_momentum(w, g, v, lr, momentum, decay):
        real(w, g, v, lr, momentum * 0, decay)
    assert sgd_mismatches(np.float64, update=no_momentum)


def test_detects_broken_kernel_in_the_whole_net():
    mp = broken("spp_forward")
    try:
        found = net_mismatches(np.float64, steps=1)
    finally:
        mp.undo()
    assert any("loss" in m for m in found)
