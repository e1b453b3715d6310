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
    monkeypatch.setattr(backend, "_WARNED", False)
    if backend.gpu_available():
        assert backend.device() == "gpu"
    else:
        with pytest.warns(RuntimeWarning, match="new arrays go to the CPU"):
            assert backend.device() == "cpu"
    monkeypatch.setenv("MINISPP_DEVICE", "tpu")
    with pytest.raises(ValueError, match="'tpu'"):
        backend.device()


def test_layers_pick_the_body_by_array_type_and_refuse_a_missing_gpu_body(monkeypatch):
    from minispp import layer as layer_module
    from minispp.layer import Layer, NoGPUBody
    assert ReLU().forward(np.array([[-1.0, 3.0]])).tolist() == [[0, 3]]

    class CPUOnly(Layer):            # a layer that has written no GPU body
        rank = None

        def infer_shape(self, in_shape):
            return in_shape

        def _forward_cpu(self, x, train=True):
            return x

    class FakeDeviceModule:          # stands for CuPy: its arrays are not NumPy's
        ndarray = np.ndarray
        isfinite = staticmethod(np.isfinite)
    monkeypatch.setattr(layer_module, "get_array_module", lambda *a: FakeDeviceModule)
    with pytest.raises(NoGPUBody, match="CPUOnly 'cpu_only': no GPU body"):
        CPUOnly(name="cpu_only").forward(np.array([[-1.0, 3.0]]))
    assert backend.to_numpy([1, 2]).tolist() == [1, 2]


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_gpu_device_without_a_gpu_is_one_clear_line():
    """Asking for the GPU where CuPy or a GPU is missing: GPUUnavailable, one line, saying
    which; the CPU stays usable and the model stays where it was."""
    import nets
    with pytest.raises(backend.GPUUnavailable, match=r"^--device gpu: (CuPy is not installed|"
                       r"CuPy sees no|CuPy finds no)") as err:
        backend.gpu_module()
    assert "\n" not in str(err.value)
    with pytest.raises(backend.GPUUnavailable):
        nets.build("small", num_classes=3, spp=(2, 1), device="gpu")
    model = nets.build("small", num_classes=3, spp=(2, 1))
    with pytest.raises(backend.GPUUnavailable):
        model.to("gpu")
    assert model.device == "cpu" and type(model.params["conv1.W"].value) is np.ndarray
    with pytest.raises(ValueError, match="'tpu'"):
        model.to("tpu")


def test_the_simulated_device_needs_the_simulator():
    """simulate_gpu() refuses to run outside Numba's CUDA simulator (this process), so the
    stand-in for CuPy can never be switched on by accident in the CPU suite."""
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM=1"):
        backend.simulate_gpu()
    assert not backend.simulated_gpu()
    marked = np.ones(3).view(backend.SimulatedDeviceArray)
    assert backend.get_array_module(marked) is np          # not consulted while off
