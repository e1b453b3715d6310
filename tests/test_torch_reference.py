"""Outputs and gradients against PyTorch CPU, an optional independent reference.

These run only where torch is installed (CI installs the CPU wheel when the machine has it);
the hand-computed cases and gradient checks in the other files are the coverage that never
skips."""

import numpy as np
import pytest

from tests.helpers import distinct
from layers import FC, LRN, SPP, Conv, MaxPool, SoftmaxLoss, WindowSPP
from minispp import Params
from nets import build


torch = pytest.importorskip("torch")
F = torch.nn.functional
from benchmarks.torch_nets import torch_net  # noqa: E402  (needs torch)
pytestmark = pytest.mark.torchref


def _t(a):
    return torch.tensor(a, requires_grad=True)


@pytest.mark.parametrize("shape, out, k, s, p", [((2, 5, 17, 13), 6, 5, 2, 1),
                                                  ((1, 3, 23, 23), 4, 7, 2, 3),
                                                  ((2, 4, 9, 9), 3, 3, 1, 1)])
def test_conv_matches_torch(rng, shape, out, k, s, p):
    params = Params(np.float64)
    conv = Conv(out, k, s, p, name="c", std=0.2, bias=0.3)
    conv.setup(shape, params, rng)
    x = rng.standard_normal(shape)
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    xt, wt, bt = _t(x), _t(params["c.W"].value), _t(params["c.b"].value)
    yt = F.conv2d(xt, wt, bt, stride=s, padding=p)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(params["c.W"].grad, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(params["c.b"].grad, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k, s, p, ceil", [(3, 2, 0, False), (3, 2, 0, True), (3, 3, 0, True),
                                           (2, 2, 1, True), (3, 2, 1, False)])
def test_maxpool_matches_torch(rng, k, s, p, ceil):
    x = distinct(rng, (2, 3, 12, 11))
    pool = MaxPool(k, s, p, ceil_mode=ceil)
    y = pool.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)
    xt = _t(x)
    yt = F.max_pool2d(xt, k, s, p, ceil_mode=ceil)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-4, 0.75, 1.0), (5, 0.5, 0.75, 2.0),
                                                  (3, 1.0, 0.6, 1.0), (4, 1.0, 0.75, 1.0)])
def test_lrn_matches_torch(rng, size, alpha, beta, k):
    x = rng.standard_normal((2, 9, 5, 6)) * 3
    lrn = LRN(size, alpha, beta, k)
    y = lrn.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = lrn.backward(dy)
    xt = _t(x)
    yt = F.local_response_norm(xt, size, alpha, beta, k)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)


def _torch_spp(xt, levels):
    # adaptive_max_pool2d uses the same floor/ceil bins as the paper's Appendix
    return torch.cat([F.adaptive_max_pool2d(xt, n).reshape(xt.shape[0], -1) for n in levels], 1)


@pytest.mark.parametrize("hw", [(13, 13), (10, 7), (2, 3), (1, 1), (43, 57)])
def test_spp_matches_torch_adaptive_pooling(rng, hw):
    x = distinct(rng, (2, 4) + hw)
    spp = SPP()
    y = spp.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = spp.backward(dy)
    xt = _t(x)
    yt = _torch_spp(xt, (6, 3, 2, 1))
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_window_spp_matches_torch_on_crops(rng):
    x = distinct(rng, (1, 3, 20, 25))
    x1, x2 = np.sort(rng.integers(0, 25, (2, 40)), axis=0)
    y1, y2 = np.sort(rng.integers(0, 20, (2, 40)), axis=0)
    windows = np.stack([x1, y1, x2, y2], 1)
    wspp = WindowSPP()
    y = wspp.forward(x, windows)
    dy = rng.standard_normal(y.shape)
    dx = wspp.backward(dy)
    xt = _t(x)
    yt = torch.cat([_torch_spp(xt[:, :, b:d + 1, a:c + 1], (6, 3, 2, 1)) for a, b, c, d in windows])
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_fc_and_softmax_loss_match_torch(rng):
    params = Params(np.float64)
    fc = FC(7, name="fc", std=0.3, bias=0.1)
    fc.setup((5, 2, 3, 2), params, rng)
    loss = SoftmaxLoss()
    x = rng.standard_normal((5, 2, 3, 2))
    labels = rng.integers(0, 7, 5)
    value = loss.forward(fc.forward(x), labels)
    dx = fc.backward(loss.backward())
    xt, wt, bt = _t(x), _t(params["fc.W"].value), _t(params["fc.b"].value)
    lt = F.cross_entropy(F.linear(xt.reshape(5, -1), wt, bt), torch.tensor(labels))
    lt.backward()
    assert value == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(params["fc.W"].grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, spp, size", [("zf5", (6, 3, 2, 1), (224, 224)),
                                             ("zf5", (6, 3, 2, 1), (180, 250)),
                                             ("convnet5", None, (224, 224)),
                                             ("overfeat7", (4, 3, 2, 1), (200, 190))])
def test_whole_networks_match_torch_with_the_same_weights(tmp_path, name, spp, size):
    """Outputs and gradients of a whole net, weights brought in through a weight file."""
    model = build(name, num_classes=50, spp=spp, rng=np.random.default_rng(0), dtype=np.float64)
    source = build(name, num_classes=50, spp=spp, rng=np.random.default_rng(9), dtype=np.float64)
    source.export_weights(tmp_path / "w.npz")
    model.import_weights(tmp_path / "w.npz")
    net = model.instance(batch=2, size=size)
    ref = torch_net(model).eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3) + size) * 50
    labels = np.array([3, 41])
    scores = net.forward(x, train=False)
    loss = net.loss_layer.forward(scores, labels)
    model.params.zero_grad()
    dx = net.backward_from(net.loss_layer.backward(), input_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    st = ref(xt)
    lt = F.cross_entropy(st, torch.tensor(labels))
    lt.backward()
    scale = np.abs(scores).max()
    np.testing.assert_allclose(scores, st.detach().numpy(), rtol=1e-9, atol=1e-9 * scale)
    assert loss == pytest.approx(lt.item(), rel=1e-9)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-7, atol=1e-9 * np.abs(dx).max())
    conv1 = ref[0]
    np.testing.assert_allclose(model.params["conv1.W"].grad, conv1.weight.grad.numpy(), rtol=1e-7,
                               atol=1e-9 * np.abs(model.params["conv1.W"].grad).max())
