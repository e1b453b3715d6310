"""The GPU path on a real device (`make test-gpu`): every layer's output and gradients on CuPy
against its CPU body, the float64 gradient checks run on the GPU, the cuDNN body against the
im2col body, the SGD update, a whole net, a few SGD steps of ZF-5 on the GPU against the
CPU, and the pinned-memory batch feed.

Skipped, with the reason, where CuPy or a GPU is missing (the CPU-only CI runs the same
comparisons on the simulated device instead: tests/test_gpu_bodies.py). Not run on any GPU
yet when this file was written (README, "The GPU path": the figures owed). The checks of this
file's own logic that need no device can be run on the simulated device by hand (the cuDNN,
ZF-5 and pinned-feed tests skip there):

    NUMBA_ENABLE_CUDASIM=1 MINISPP_GPU_TESTS_ON_SIMULATOR=1 python -m pytest tests/test_gpu.py
"""
import os

import numpy as np
import pytest

from minispp import backend

ON_DEVICE = backend.gpu_available()
if not ON_DEVICE and os.environ.get("MINISPP_GPU_TESTS_ON_SIMULATOR") == "1":
    backend.simulate_gpu()          # refuses unless NUMBA_ENABLE_CUDASIM=1
RUN = ON_DEVICE or backend.simulated_gpu()
pytestmark = pytest.mark.skipif(not RUN, reason="needs CuPy and a CUDA GPU "
                                                "(pip install -e '.[gpu]')")
device_only = pytest.mark.skipif(not ON_DEVICE, reason="needs a real GPU (not the simulator)")

if RUN:
    xp = backend.gpu_module()       # cupy (or the simulated device)

    import nets
    from layers import FC, LRN, SPP, Conv, MaxPool, ReLU, SoftmaxLoss, WindowSPP
    from minispp import Params
    from minispp.backend import to_numpy
    from minispp.data.device_feed import device_batches
    from minispp.gradcheck import numerical_gradient, relative_error
    from minispp.solver import SGD
    from tests.gpu_parity import (DTYPES, LAYER_CASES, layer_case, layer_mismatches,
                                  net_mismatches, sgd_mismatches, values,
                                  window_spp_mismatches)
else:
    DTYPES, LAYER_CASES = (np.float32, np.float64), {}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_on_cupy_matches_the_cpu_body(name, dtype):
    assert not layer_case(name, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_window_spp_on_cupy(dtype):
    assert not window_spp_mismatches(dtype)
    assert not window_spp_mismatches(dtype, feature_stride=16)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_softmax_loss_on_cupy(dtype):
    assert not layer_mismatches(lambda: SoftmaxLoss(), values((4, 5), dtype),
                                (np.array([0, 4, 2, 2]),))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sgd_on_cupy(dtype):
    assert not sgd_mismatches(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_whole_net_on_cupy(dtype):
    assert not net_mismatches(dtype)


# ---------------------------------------------------------------------------- gradient checks

GRADCHECK = {
    "conv": (lambda: Conv(out_channels=3, kernel=3, stride=2, pad=1), (2, 2, 5, 6)),
    "pool": (lambda: MaxPool(3, 2, ceil_mode=True), (1, 2, 6, 7)),
    "lrn": (lambda: LRN(size=3, alpha=1.0, beta=0.75, k=2.0), (1, 4, 2, 3)),
    "relu": (lambda: ReLU(), (2, 6)),
    "fc": (lambda: FC(out_features=3), (2, 2, 2, 2)),
    "spp": (lambda: SPP((3, 2, 1)), (2, 2, 5, 6)),
}


def spaced(shape, seed):
    """float64 values at least 0.05 apart and none 0 (no max-type winner or ReLU side changes
    under +-2h)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2 + 0.25) * 0.05).reshape(shape).astype(np.float64)


@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_gradcheck_on_the_gpu(name):
    """The analytic gradients of the GPU bodies (x and every parameter) against central
    differences of the GPU forward, in float64 on the device."""
    make, shape = GRADCHECK[name]
    params = Params(np.float64)
    layer = make()
    layer.setup(shape, params, rng=np.random.default_rng(0))
    params.to("gpu")
    x = spaced(shape, 1)
    g = np.random.default_rng(2).standard_normal(layer.out_shape)

    def f():
        return to_numpy(layer.forward(xp.asarray(x), train=True))
    f()
    dx = to_numpy(layer.backward(xp.asarray(g)))
    errors = {"x": relative_error(dx, numerical_gradient(f, x, g))}
    for pname in layer.param_names:
        p = params[pname]
        p.grad[...] = 0
        f()
        layer.backward(xp.asarray(g))
        analytic = to_numpy(p.grad)
        host = to_numpy(p.value)

        def fp():
            p.value[...] = xp.asarray(host)
            return f()
        errors[pname] = relative_error(analytic, numerical_gradient(fp, host, g))
        p.value[...] = xp.asarray(host)
    assert max(errors.values()) < 1e-6, errors


def test_gradcheck_window_spp_on_the_gpu():
    layer = WindowSPP((2, 1))
    x = spaced((1, 2, 6, 7), 3)
    windows = np.array([[0, 0, 6, 5], [1, 2, 4, 4]])
    layer.setup(x.shape)

    def f():
        return to_numpy(layer.forward(xp.asarray(x), windows, train=True))
    g = np.random.default_rng(4).standard_normal(f().shape)
    dx = to_numpy(layer.backward(xp.asarray(g)))
    assert relative_error(dx, numerical_gradient(f, x, g)) < 1e-6


# ---------------------------------------------------------------------------- cuDNN

def cudnn_installed():
    try:
        import cudnn  # noqa: F401
    except ImportError:
        return False
    return True


@device_only
@pytest.mark.skipif(not cudnn_installed(), reason="the cuDNN Frontend (PyPI "
                                                  "nvidia-cudnn-frontend) is not installed")
@pytest.mark.parametrize("case", [((2, 3, 13, 11), 4, 3, 2, 1), ((1, 8, 9, 9), 6, 5, 1, 2),
                                  ((3, 16, 27, 27), 32, 5, 2, 1)])
def test_cudnn_body_matches_the_im2col_body(case, monkeypatch):
    """float32 through cuDNN's fprop / dgrad / wgrad (TF32 engines deselected) against the
    im2col + cuBLAS body, both on the GPU, and against the CPU body."""
    from minispp.kernels.gpu import cudnn_conv
    shape, F, k, s, p = case
    results = {}
    for body in ("cudnn", "im2col", "cpu"):
        with monkeypatch.context() as mp:
            if body == "im2col":
                mp.setattr(cudnn_conv, "usable", lambda x: False)
            params = Params(np.float32)
            layer = Conv(out_channels=F, kernel=k, stride=s, pad=p, bias=0.3)
            layer.setup(shape, params, rng=np.random.default_rng(0))
            if body != "cpu":
                params.to("gpu")
            mod = xp if body != "cpu" else np
            x = values(shape, np.float32)
            y = layer.forward(mod.asarray(x))
            if body == "cudnn":
                assert layer.saved.x is not None and layer.saved.col is None, "cuDNN did not run"
            dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
            dx = layer.backward(mod.asarray(dy))
            results[body] = [to_numpy(a) for a in (y, dx, params[layer.name + ".W"].grad,
                                                   params[layer.name + ".b"].grad)]
    for other in ("im2col", "cpu"):
        for what, a, b in zip(("y", "dx", "dW", "db"), results["cudnn"], results[other]):
            assert np.allclose(a, b, rtol=1e-4, atol=1e-4), (other, what,
                                                              float(np.abs(a - b).max()))


# ---------------------------------------------------------------------------- ZF-5 and the feed

@device_only
def test_zf5_sgd_steps_gpu_vs_cpu():
    """Three SGD steps of ZF-5 + SPP(6,3,2,1) at batch 4, 224 x 224, from the same weights and
    batches: the losses and the parameters after the steps agree to float32 rounding."""
    runs = {}
    batches = [(np.random.default_rng(i).standard_normal((4, 3, 224, 224)).astype(np.float32),
                np.random.default_rng(i).integers(0, 10, 4)) for i in range(3)]
    for device in ("cpu", "gpu"):
        model = nets.build("zf5", num_classes=10, rng=np.random.default_rng(0), device=device)
        net = model.instance(batch=4, size=(224, 224))
        solver = SGD(model.params, lr=0.01)
        losses = []
        for x, labels in batches:
            model.params.zero_grad()
            losses.append(net.loss(model.xp.asarray(x), labels))
            net.backward()
            solver.step()
        runs[device] = losses, {n: to_numpy(model.params[n].value) for n in model.params}
    (cl, cp), (gl, gp) = runs["cpu"], runs["gpu"]
    assert np.allclose(gl, cl, rtol=1e-3), (gl, cl)
    for name in cp:
        assert np.allclose(gp[name], cp[name], rtol=1e-3, atol=1e-5), name


@device_only
def test_pinned_feed_delivers_every_batch_on_the_device():
    batches = [(b, np.full((2, 3, 4, 5), b, np.float32), np.array([b, b])) for b in range(5)]
    got = list(device_batches(iter(batches), "gpu"))
    assert [b for b, _, _ in got] == list(range(5))
    for (b, x, labels), (_, want, want_labels) in zip(got, batches):
        assert isinstance(x, xp.ndarray) and np.array_equal(x.get(), want)
        assert np.array_equal(labels, want_labels)
