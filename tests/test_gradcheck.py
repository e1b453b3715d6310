"""float64 central-difference checks of every layer's input and parameter gradients, and of a
whole small net. The errors are the largest elementwise relative error (minispp.gradcheck)."""
import numpy as np
import pytest

from tests.helpers import distinct
from layers import FC, LRN, SPP, Conv, Dropout, MaxPool, ReLU, SoftmaxLoss, WindowSPP
from minispp import Params
from nets import build
from minispp.gradcheck import check_layer, check_net, numerical_gradient, relative_error

TOL = 1e-6
pytestmark = pytest.mark.gradcheck


@pytest.mark.parametrize("shape, out, kernel, stride, pad", [
    ((2, 3, 7, 7), 4, 3, 1, 0),        # plain
    ((2, 2, 9, 8), 3, 5, 2, 1),        # conv2-like: 5x5, stride 2, pad 1, odd/even sizes
    ((1, 3, 11, 10), 2, 7, 2, 3),      # conv1-like 7x7 stride 2, large pad
    ((2, 2, 5, 6), 3, 1, 1, 0),        # 1x1
    ((1, 2, 6, 7), 2, (3, 2), (2, 1), (1, 0)),  # rectangular kernel, stride and pad
    ((1, 1, 3, 3), 2, 5, 1, 1),        # kernel larger than the unpadded input
])
def test_conv_gradients(rng, record_gradcheck, shape, out, kernel, stride, pad):
    params = Params(np.float64)
    conv = Conv(out, kernel, stride, pad, name="conv", std=1.0, bias=0.1)
    conv.setup(shape, params, rng)
    errors = check_layer(conv, rng.standard_normal(shape), rng=rng)
    record_gradcheck("Conv", errors)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("shape, kernel, stride, pad, ceil", [
    ((2, 3, 7, 7), 3, 2, 0, False),
    ((2, 3, 7, 8), 3, 2, 0, True),     # ceil mode: the last window is cut by the border
    ((1, 2, 10, 9), 3, 3, 0, True),    # Overfeat pool1: 3x3 stride 3
    ((1, 2, 6, 6), 2, 2, 0, False),    # non-overlapping
    ((1, 2, 7, 7), 3, 2, 1, True),     # padding
    ((1, 2, 5, 5), 3, 1, 0, False),    # heavy overlap: a cell wins many windows
])
def test_maxpool_gradients(rng, record_gradcheck, shape, kernel, stride, pad, ceil):
    pool = MaxPool(kernel, stride, pad, ceil_mode=ceil)
    errors = check_layer(pool, distinct(rng, shape), rng=rng)
    record_gradcheck("MaxPool", errors)
    assert errors["x"] < TOL, errors


@pytest.mark.parametrize("shape, size, alpha, beta, k", [
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 1.0),    # ZF-5's values
    ((2, 7, 3, 4), 5, 2.0, 0.75, 1.0),     # large alpha: the cross-channel term matters
    ((1, 4, 3, 3), 3, 1.5, 0.6, 2.0),      # generic beta (exp/log path)
    ((1, 6, 2, 3), 4, 1.0, 0.5, 1.0),      # even size: asymmetric window
    ((1, 3, 2, 2), 7, 1.0, 1.0, 0.5),      # window wider than the channel count
])
def test_lrn_gradients(rng, record_gradcheck, shape, size, alpha, beta, k):
    lrn = LRN(size, alpha, beta, k)
    errors = check_layer(lrn, rng.standard_normal(shape), rng=rng)
    record_gradcheck("LRN", errors)
    assert errors["x"] < TOL, errors


@pytest.mark.parametrize("shape, levels, form", [
    ((2, 3, 13, 13), (6, 3, 2, 1), "appendix"),
    ((2, 3, 13, 13), (6, 3, 2, 1), "fixed"),
    ((1, 2, 10, 10), (6, 3, 2, 1), "fixed"),      # the a = 10 fixed form
    ((1, 2, 10, 7), (6, 3, 2, 1), "appendix"),
    ((1, 2, 1, 1), (6, 3, 2, 1), "appendix"),     # a = 1 < n = 6
    ((1, 2, 2, 2), (6, 3, 2, 1), "appendix"),     # a = 2
    ((1, 2, 5, 5), (6, 3, 2, 1), "appendix"),     # a = 5
    ((1, 2, 5, 3), (4, 3, 2, 1), "appendix"),     # the 30-bin pyramid
])
def test_spp_gradients(rng, record_gradcheck, shape, levels, form):
    spp = SPP(levels, form=form)
    errors = check_layer(spp, distinct(rng, shape), rng=rng)
    record_gradcheck("SPP", errors)
    assert errors["x"] < TOL, errors


@pytest.mark.parametrize("map_shape, windows", [
    ((1, 3, 8, 9), [[0, 0, 8, 7], [2, 3, 5, 6], [1, 1, 4, 6]]),     # whole map, inner windows
    ((1, 2, 6, 7), [[3, 2, 3, 2], [0, 0, 0, 0], [6, 5, 6, 5]]),     # single cells, corners
    ((1, 2, 6, 7), [[0, 2, 6, 3], [5, 0, 6, 5], [4, 4, 6, 5]]),     # touching the border
    ((1, 2, 7, 7), [[1, 1, 5, 5], [1, 1, 5, 5], [2, 0, 4, 6]]),     # repeated window: grads add
])
def test_window_spp_gradients(rng, record_gradcheck, map_shape, windows):
    wspp = WindowSPP((6, 3, 2, 1))
    errors = check_layer(wspp, distinct(rng, map_shape), np.array(windows), rng=rng)
    record_gradcheck("WindowSPP", errors)
    assert errors["x"] < TOL, errors


def test_window_spp_pixel_windows_gradients(rng, record_gradcheck):
    wspp = WindowSPP((3, 2, 1), feature_stride=16)
    boxes = np.array([[0, 0, 150, 100], [40, 30, 50, 45], [10, 60, 120, 110]], float)
    errors = check_layer(wspp, distinct(rng, (1, 2, 8, 10)), boxes, rng=rng)
    record_gradcheck("WindowSPP", errors)
    assert errors["x"] < TOL, errors


@pytest.mark.parametrize("shape, out", [((3, 5), 4), ((2, 3, 2, 2), 5), ((4, 7), 1)])
def test_fc_gradients(rng, record_gradcheck, shape, out):
    params = Params(np.float64)
    fc = FC(out, name="fc", std=1.0, bias=0.1)
    fc.setup(shape, params, rng)
    errors = check_layer(fc, rng.standard_normal(shape), rng=rng)
    record_gradcheck("FC", errors)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 4, 5)])
def test_relu_gradients(rng, record_gradcheck, shape):
    x = distinct(rng, shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep every input away from the kink at 0
    errors = check_layer(ReLU(), x, rng=rng)
    record_gradcheck("ReLU", errors)
    assert errors["x"] < TOL, errors


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_dropout_gradients_with_a_fixed_mask(rng, record_gradcheck, ratio):
    drop = Dropout(ratio, rng=rng)
    x = rng.standard_normal((4, 9))
    drop.forward(x, train=True)
    drop.freeze()
    errors = check_layer(drop, x, rng=rng)
    record_gradcheck("Dropout", errors)
    assert errors["x"] < TOL, errors


@pytest.mark.parametrize("N, K", [(4, 5), (1, 3), (6, 21)])
def test_softmax_loss_gradients(rng, record_gradcheck, N, K):
    loss = SoftmaxLoss()
    scores = rng.standard_normal((N, K))
    labels = rng.integers(0, K, N)
    loss.forward(scores, labels)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(scores, labels), scores, 1.0)
    err = relative_error(analytic, numeric)
    record_gradcheck("SoftmaxLoss", {"x": err})
    assert err < TOL


def small_net(rng, size=(11, 11)):
    """The "small" definition (every layer kind of ZF-5) in float64, with a fixed dropout
    mask keeping half the fc6 units."""
    model = build("small", num_classes=4, spp=(3, 2, 1), rng=rng, dtype=np.float64)
    net = model.instance(batch=2, size=size)
    keep = np.zeros((2, 8))
    keep[:, ::2] = 1
    net.layers[9].freeze(keep)   # the same net for every perturbed forward
    return net, model.params


def test_whole_small_net_gradients(rng, record_gradcheck):
    net, params = small_net(rng)
    x = rng.standard_normal((2, 3, 11, 11))
    labels = np.array([1, 3])
    errors = check_net(net, x, labels, params)
    for name in net.param_names():           # a check on zero gradients would prove nothing
        assert np.abs(params[name].grad).max() > 1e-3, name
    record_gradcheck("whole net (conv..softmax)", errors)
    assert set(errors) == {"x", "conv1.W", "conv1.b", "conv2.W", "conv2.b", "fc6.W", "fc6.b",
                           "fc8.W", "fc8.b"}
    assert max(errors.values()) < TOL, errors


class HalfBackwardLRN(LRN):
    """LRN whose backward forgets the cross-channel term: a plausible bug."""

    def _backward_cpu(self, dy, propagate_down=True):
        x3, inv = self.saved.x3, self.saved.inv
        return (dy.reshape(x3.shape) * inv).reshape(self.in_shape)


class OffByOneConv(Conv):
    """Conv whose weight gradient is scaled wrongly."""

    def _backward_cpu(self, dy, propagate_down=True):
        dx = super()._backward_cpu(dy, propagate_down)
        self.param("W").grad *= 1.01
        return dx


def test_checker_fails_on_a_broken_backward(rng):
    x = rng.standard_normal((1, 5, 3, 3))
    errors = check_layer(HalfBackwardLRN(3, alpha=1.0, beta=0.75, k=1.0), x, rng=rng)
    assert errors["x"] > 1e-3
    params = Params(np.float64)
    conv = OffByOneConv(2, 3, name="bad")
    conv.setup((1, 2, 5, 5), params, rng)
    errors = check_layer(conv, rng.standard_normal((1, 2, 5, 5)), rng=rng)
    assert errors["x"] < TOL and errors["bad.W"] > 1e-3


def test_checker_fails_when_a_net_layer_is_broken(rng):
    net, params = small_net(rng)
    net.layers[2] = HalfBackwardLRN(3, alpha=1.0, beta=0.75, k=2.0)
    net.layers[2].setup(net.layers[1].out_shape)
    x = rng.standard_normal((2, 3, 11, 11))
    errors = check_net(net, x, np.array([0, 2]), params)
    assert errors["x"] > 1e-3 and errors["conv1.W"] > 1e-3
    assert errors["fc8.W"] < TOL  # layers above the broken one are still right
