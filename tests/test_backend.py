"""The array-module backend: the data decides the module; the CPU is the default."""
import numpy as np
import pytest

from layers import ReLU
from minispp import backend


def test_numpy_arrays_get_numpy():
    assert backend.get_array_module(np.ones(3)) is np
    assert backend.get_array_module(1.0, [2]) is np


def test_device_defaults_to_cpu_and_gpu_falls_back_without_one(monkeypatch):
    monkeypatch.delenv("MINISPP_DEVICE", raising=False)
    assert backend.device() == "cpu" and backend.default_module() is np
    monkeypatch.setenv("MINISPP_DEVICE", "gpu")
    assert backend.device() == ("gpu" if backend.gpu_available() else "cpu")
    monkeypatch.setenv("MINISPP_DEVICE", "tpu")
    with pytest.raises(ValueError, match="'tpu'"):
        backend.device()


def test_layers_pick_the_body_by_array_type_and_refuse_a_missing_gpu_body(monkeypatch):
    from minispp import layer as layer_module
    from minispp.layer import NoGPUBody
    assert ReLU().forward(np.array([[-1.0, 3.0]])).tolist() == [[0, 3]]

    class FakeDeviceModule:          # stands for CuPy: its arrays are not NumPy's
        ndarray = np.ndarray
        isfinite = staticmethod(np.isfinite)
    monkeypatch.setattr(layer_module, "get_array_module", lambda *a: FakeDeviceModule)
    with pytest.raises(NoGPUBody, match="ReLU 'relu': no GPU body"):
        ReLU().forward(np.array([[-1.0, 3.0]]))
    assert backend.to_numpy([1, 2]).tolist() == [1, 2]
