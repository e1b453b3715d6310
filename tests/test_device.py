"""Device as a choice (README, "The GPU path"): --device on every command that runs a net,
and `gpu` refused in one line where CuPy or a GPU is missing, before any work."""
import warnings

import numpy as np
import pytest

from minispp import backend
from train.cli import main, parse_args

# each command with its required arguments (none of the paths exist: the device is refused
# before anything is read)
COMMANDS = {
    "train": ["--data", "nowhere", "--out", "{tmp}/run"],
    "test": ["--checkpoint", "nowhere.h5", "--data", "nowhere"],
    "features": ["--checkpoint", "nowhere.h5", "--voc", "nowhere", "--split", "test",
                 "--out", "{tmp}/f.h5"],
    "detect-train": ["--voc", "nowhere", "--checkpoint", "nowhere.h5", "--out", "{tmp}/det"],
    "detect-test": ["--voc", "nowhere", "--model", "nowhere"],
    "detect": ["nowhere.jpg", "--model", "nowhere", "--out", "{tmp}/pictures"],
    "detect-time": ["--voc", "nowhere", "--model", "nowhere"],
}


def argv(command, tmp_path, *more):
    return [command] + [a.format(tmp=tmp_path) for a in COMMANDS[command]] + list(more)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_device(command, tmp_path):
    assert parse_args(argv(command, tmp_path, "--device", "cpu")).device == "cpu"
    assert parse_args(argv(command, tmp_path, "--device", "gpu")).device == "gpu"
    assert parse_args(argv(command, tmp_path)).device is None      # the process default


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_device_gpu_without_a_gpu_is_one_line_before_any_work(command, tmp_path, capsys):
    assert main(argv(command, tmp_path, "--device", "gpu")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device gpu: CuPy is not installed"), err
    assert list(tmp_path.iterdir()) == []            # no --out folder made
    assert backend.device() == "cpu"


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_minispp_device_gpu_is_refused_by_a_command_and_warned_of_by_the_library(tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(backend, "_CHOSEN", None)          # restored after the test
    monkeypatch.setenv("MINISPP_DEVICE", "gpu")
    assert main(argv("detect-train", tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: MINISPP_DEVICE=gpu: CuPy is not installed"), err
    with warnings.catch_warnings():         # the library's fallback warning, before --device
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(argv("detect-train", tmp_path, "--device", "cpu")) == 2     # --device wins:
    assert "MINISPP_DEVICE" not in capsys.readouterr().err                  # (fails later, on 'nowhere')
    monkeypatch.setattr(backend, "_WARNED", False)
    backend._CHOSEN = None
    with pytest.warns(RuntimeWarning, match="MINISPP_DEVICE=gpu, but CuPy is not installed"):
        assert backend.device() == "cpu"


def test_device_choice_places_new_models():
    """use_device is the default of nets.build / nets.load (the command line sets it); an
    unknown device is refused by name."""
    import nets
    old = backend._CHOSEN
    try:
        backend.use_device("cpu")
        model = nets.build("small", num_classes=2, spp=(2, 1))
        assert model.device == "cpu" and type(model.params["fc8.W"].value) is np.ndarray
        with pytest.raises(ValueError, match="'tpu'"):
            backend.use_device("tpu")
    finally:
        backend._CHOSEN = old


def test_device_batches_on_the_cpu_are_the_loaders_own():
    from minispp.data.device_feed import device_batches
    batches = [(0, np.ones((2, 3)), np.array([1, 0]), [5, 6]),
               (1, np.zeros((1, 3)), np.array([2]), [7])]
    got = list(device_batches(iter(batches), "cpu"))
    assert len(got) == 2 and all(g is b for g, b in zip(got, batches))
    with pytest.raises(ValueError, match="'tpu'"):
        list(device_batches(iter(batches), "tpu"))


# ---------------------------------------------------------------------------- cuDNN plans
# (the Frontend needs a GPU to build a graph; these run the cache's bookkeeping with fakes)

class _FakeCupy:
    """Just what cudnn_conv.plan asks of CuPy: the current device's id."""
    class cuda:
        class Device:
            id = 0


def _fake_cudnn(create_handle):
    return type("FakeCudnn", (), {"create_handle": staticmethod(create_handle)})


def test_cudnn_plans_are_bounded_least_recently_used_out(monkeypatch):
    import sys
    from minispp.kernels.gpu import cudnn_conv
    from minispp.lru import LRUCache
    built = []
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)
    monkeypatch.setattr(cudnn_conv, "cudnn", _fake_cudnn(lambda: "handle"))
    monkeypatch.setattr(cudnn_conv, "_handles", {})
    monkeypatch.setattr(cudnn_conv, "_plans", LRUCache(3))
    monkeypatch.setattr(cudnn_conv, "_build",
                        lambda op, x, w, y, s, p, h: built.append(x[2]) or (op, x[2]))

    def plan(h):
        return cudnn_conv.plan("fprop", (1, 3, h, 9), (2, 3, 3, 3), (1, 2, h - 2, 7),
                               (1, 1), (0, 0))

    for h in (10, 11, 12):
        assert plan(h) == ("fprop", h)
    plan(10)                                   # used again: now the most recent
    assert plan(13) == ("fprop", 13)           # evicts 11, the least recently used
    assert len(cudnn_conv._plans) == 3
    assert built == [10, 11, 12, 13]           # 10 was not rebuilt
    plan(11)
    assert built == [10, 11, 12, 13, 11]       # 11 was


def test_an_unloadable_cudnn_falls_back_to_im2col_with_a_warning(monkeypatch):
    import sys
    from minispp.kernels.gpu import cudnn_conv

    def no_library():
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)
    monkeypatch.setattr(cudnn_conv, "cudnn", _fake_cudnn(no_library))
    monkeypatch.setattr(cudnn_conv, "_handles", {})
    monkeypatch.setattr(cudnn_conv, "_plans", cudnn_conv.LRUCache(64))
    with pytest.warns(UserWarning, match="cuDNN unusable.*libcudnn.so.9.*im2col"):
        assert cudnn_conv.plan("fprop", (1, 3, 9, 9), (2, 3, 3, 3), (1, 2, 7, 7),
                               (1, 1), (0, 0)) is None
    assert cudnn_conv.cudnn is None            # usable() says no from now on


def test_a_test_time_conv_forward_builds_only_its_fprop_graph(monkeypatch):
    from layers.conv import Conv
    from minispp.kernels.gpu import cudnn_conv
    from minispp.params import Params
    asked = []
    monkeypatch.setattr(cudnn_conv, "plan", lambda op, *shapes: asked.append(op) or op)
    layer = Conv(out_channels=2, kernel=3)
    layer.setup((1, 3, 6, 6), Params(np.float32), rng=np.random.default_rng(0))
    assert layer._cudnn_plan("fprop", train=False) == "fprop"
    assert asked == ["fprop"]
    asked.clear()
    assert layer._cudnn_plan("fprop", train=True) == "fprop"
    assert sorted(asked) == ["dgrad", "fprop", "wgrad"]
    monkeypatch.setattr(cudnn_conv, "plan", lambda op, *shapes: None if op == "wgrad" else op)
    assert layer._cudnn_plan("fprop", train=True) is None     # no wgrad: im2col for training
    assert layer._cudnn_plan("fprop", train=False) == "fprop"
