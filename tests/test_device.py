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
