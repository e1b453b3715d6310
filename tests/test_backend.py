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


def test_ops_without_a_gpu_body_refuse_other_arrays_clearly():
    class FakeDeviceArray:
        pass
    with pytest.raises(TypeError, match="Conv: expected a numpy.ndarray, got .*FakeDeviceArray"):
        backend.require_cpu(FakeDeviceArray(), "Conv")
    assert backend.to_numpy([1, 2]).tolist() == [1, 2]
    assert ReLU().forward(np.array([[-1.0, 3.0]])).tolist() == [[0, 3]]
