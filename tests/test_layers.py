"""Hand-computed cases, shapes, float32 vs float64, and bad input for every layer."""
import numpy as np
import pytest

from tests.helpers import distinct
from layers import FC, LRN, SPP, Conv, Dropout, MaxPool, ReLU, SoftmaxLoss, WindowSPP
from minispp import Params
from minispp.geometry import spp_bins


# -- hand-computed cases ---------------------------------------------------------------
def test_conv_hand_computed():
    params = Params(np.float64)
    conv = Conv(1, 2, stride=1, pad=0, name="c")
    conv.setup((1, 1, 3, 3), params)
    params["c.W"].value[...] = [[[[1, 0], [0, 2]]]]
    params["c.b"].value[...] = [0.5]
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    # y[i, j] = x[i, j] + 2 x[i+1, j+1] + 0.5
    assert conv.forward(x).tolist() == [[[[8.5, 11.5], [17.5, 20.5]]]]
    dx = conv.backward(np.ones((1, 1, 2, 2)))
    assert dx.tolist() == [[[[1, 1, 0], [1, 3, 2], [0, 2, 2]]]]
    assert params["c.W"].grad.tolist() == [[[[8, 12], [20, 24]]]]   # sums of the 2x2 windows
    assert params["c.b"].grad.tolist() == [4]


def test_conv_padding_and_stride_hand_computed():
    params = Params(np.float64)
    conv = Conv(1, 3, stride=2, pad=1, name="c")
    assert conv.setup((1, 1, 4, 4), params) == (1, 1, 2, 2)
    params["c.W"].value[...] = 1
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    # 3x3 sums of the zero-padded map centred at (0,0), (0,2), (2,0), (2,2)
    assert conv.forward(x).tolist() == [[[[10, 24], [51, 90]]]]


def test_conv_gradients_accumulate_in_the_shared_store():
    params = Params(np.float64)
    rng = np.random.default_rng(0)
    a = Conv(2, 3, name="shared")
    b = Conv(2, 3, name="shared")          # another instance, same parameters
    a.setup((1, 2, 5, 5), params, rng)
    b.setup((1, 2, 7, 7), params, rng)
    assert len(params) == 2
    a.forward(rng.standard_normal((1, 2, 5, 5)))
    a.backward(np.ones((1, 2, 3, 3)))
    g1 = params["shared.W"].grad.copy()
    b.forward(rng.standard_normal((1, 2, 7, 7)))
    b.backward(np.ones((1, 2, 5, 5)))
    assert not np.allclose(params["shared.W"].grad, g1)
    params.zero_grad()
    assert not params["shared.W"].grad.any()


def test_maxpool_hand_computed_floor_and_ceil():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    assert MaxPool(2, 2).forward(x).tolist() == [[[[5, 7], [13, 15]]]]
    assert MaxPool(3, 2, ceil_mode=False).forward(x).shape == (1, 1, 1, 1)
    y = MaxPool(3, 2, ceil_mode=True).forward(x)       # windows rows/cols [0:3], [2:4]
    assert y.tolist() == [[[[10, 11], [14, 15]]]]


def test_maxpool_backward_routes_to_the_winner_and_overlaps_add():
    x = np.array([[[[1, 2, 3], [4, 9, 5], [6, 7, 8]]]], dtype=np.float64)
    pool = MaxPool(2, 1)           # four overlapping 2x2 windows, all won by the 9
    assert pool.forward(x).tolist() == [[[[9, 9], [9, 9]]]]
    dx = pool.backward(np.array([[[[1, 2], [3, 4]]]], dtype=np.float64))
    assert dx.tolist() == [[[[0, 0, 0], [0, 10, 0], [0, 0, 0]]]]


def test_maxpool_ceil_mode_sizes_match_caffe_rule():
    # ZF-5 pool after conv1: 110 -> 55 with 3x3 stride 2 in ceil mode, 54 in floor mode
    assert MaxPool(3, 2, ceil_mode=True).setup((1, 1, 110, 110)) == (1, 1, 55, 55)
    assert MaxPool(3, 2, ceil_mode=False).setup((1, 1, 110, 110)) == (1, 1, 54, 54)
    # a last window that would start in the padding is dropped
    assert MaxPool(2, 2, pad=1, ceil_mode=True).setup((1, 1, 4, 4)) == (1, 1, 3, 3)


def test_lrn_hand_computed():
    # size 3, alpha 3 (alpha/size = 1), beta 1, k 1; one pixel, channels (1, 2, 3)
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = LRN(size=3, alpha=3.0, beta=1.0, k=1.0).forward(x)
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14])
    y = LRN(size=3, alpha=3.0, beta=0.75, k=1.0).forward(x)
    np.testing.assert_allclose(y.ravel(), [6 ** -0.75, 2 * 15 ** -0.75, 3 * 14 ** -0.75])


def test_lrn_generic_beta_matches_formula(rng):
    x = rng.standard_normal((2, 6, 3, 3))
    size, alpha, beta, k = 5, 0.3, 0.6, 2.0
    y = LRN(size, alpha, beta, k).forward(x)
    sq = np.pad(x ** 2, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    s = sum(sq[:, i:i + 6] for i in range(size))
    np.testing.assert_allclose(y, x / (k + alpha / size * s) ** beta, rtol=1e-12)


def test_relu_hand_computed():
    relu = ReLU()
    assert relu.forward(np.array([[-1.0, 0.0, 2.0]])).tolist() == [[0, 0, 2]]
    assert relu.backward(np.array([[5.0, 5.0, 5.0]])).tolist() == [[0, 0, 5]]


def test_fc_hand_computed():
    params = Params(np.float64)
    fc = FC(2, name="fc")
    assert fc.setup((1, 3), params) == (1, 2)
    params["fc.W"].value[...] = [[1, 2, 3], [0, -1, 1]]
    params["fc.b"].value[...] = [1, 0]
    assert fc.forward(np.array([[1.0, 1.0, 2.0]])).tolist() == [[10, 1]]
    dx = fc.backward(np.array([[1.0, 2.0]]))
    assert dx.tolist() == [[1, 0, 5]]
    assert params["fc.W"].grad.tolist() == [[1, 1, 2], [2, 2, 4]]


def test_dropout_mask_scale_and_test_mode():
    x = np.ones((200, 50))
    drop = Dropout(0.5, rng=np.random.default_rng(0))
    y = drop.forward(x, train=True)
    assert set(np.unique(y)) == {0.0, 2.0}
    assert abs(y.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), y)
    np.testing.assert_array_equal(drop.forward(x, train=False), x)


def test_dropout_same_seed_same_mask():
    x = np.ones((4, 8))
    a = Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    b = Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    np.testing.assert_array_equal(a, b)


def test_softmax_loss_hand_computed():
    loss = SoftmaxLoss()
    assert loss.forward(np.zeros((2, 4)), np.array([0, 3])) == pytest.approx(np.log(4))
    d = loss.backward()
    np.testing.assert_allclose(d, (np.full((2, 4), 0.25) - np.eye(4)[[0, 3]]) / 2)


def test_softmax_loss_is_stable_for_huge_scores():
    loss = SoftmaxLoss()
    value = loss.forward(np.array([[1000.0, 0.0], [0.0, -1000.0]]), np.array([0, 1]))
    assert value == pytest.approx(500.0)
    assert np.isfinite(loss.backward()).all()


def test_spp_hand_computed_layout():
    # two channels of a 4x4 map, levels (2, 1): level 2 bins are the 2x2 quadrants
    x = np.stack([np.arange(16.0), 100 - np.arange(16.0)]).reshape(1, 2, 4, 4)
    y = SPP(levels=(2, 1)).forward(x)
    assert y.tolist() == [[5, 7, 13, 15, 100, 98, 92, 90, 15, 100]]


def spp_reference(x, levels, form):
    """The SPP forward written plainly from geometry.spp_bins: for each level, each bin's
    max over its rows and columns, laid out level by level, channel-major (C, n, n)."""
    N, C, H, W = x.shape
    out = []
    for n in levels:
        rows, cols = spp_bins(H, n, form), spp_bins(W, n, form)
        level = np.empty((N, C, n, n), x.dtype)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                level[:, :, i, j] = x[:, :, r0:r1, c0:c1].max(axis=(2, 3))
        out.append(level.reshape(N, -1))
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("shape, levels, form", [((2, 3, 13, 13), (6, 3, 2, 1), "appendix"),
                                                 ((1, 4, 10, 7), (6, 3, 2, 1), "appendix"),
                                                 ((2, 2, 5, 3), (4, 2, 1), "appendix"),
                                                 ((1, 3, 13, 13), (6, 3, 2, 1), "fixed"),
                                                 ((2, 2, 10, 10), (4, 3, 2, 1), "fixed")])
def test_spp_forward_matches_a_numpy_reference_built_from_spp_bins(rng, shape, levels, form):
    x = rng.standard_normal(shape)
    np.testing.assert_array_equal(SPP(levels, form=form).forward(x), spp_reference(x, levels, form))


def test_spp_backward_overlapping_bins_add():
    # a 1x1 map: every bin of every level is that one cell
    spp = SPP(levels=(3, 1))
    spp.forward(np.array([[[[2.0]]]]))
    dx = spp.backward(np.arange(1.0, 11.0).reshape(1, 10))
    assert dx.tolist() == [[[[55.0]]]]


@pytest.mark.parametrize("hw", [(13, 13), (10, 10), (1, 1), (5, 3), (27, 40)])
def test_spp_output_length_is_independent_of_input_size(hw):
    assert SPP().setup((2, 256) + hw) == (2, 12800)
    assert SPP().forward(np.ones((1, 8) + hw, np.float32)).shape == (1, 400)


def test_spp_fixed_form_at_a10_ignores_the_last_columns(rng):
    x = distinct(rng, (1, 1, 10, 10))
    x[..., 7:] = 1e6            # only cells the fixed form never pools
    x[..., 7:, :] = 1e6
    fixed = SPP((6,), form="fixed").forward(x)
    appendix = SPP((6,), form="appendix").forward(x)
    assert fixed.max() < 1e6 and appendix.max() == 1e6


def test_spp_fixed_form_rejects_a_map_smaller_than_a_level():
    with pytest.raises(ValueError, match="5x5 feature map.*map size 5 < level 6"):
        SPP((6, 3, 2, 1), form="fixed").setup((1, 4, 5, 5))


def test_window_spp_single_cell_window_repeats_that_cell():
    x = np.arange(2 * 4 * 5, dtype=np.float64).reshape(1, 2, 4, 5)
    y = WindowSPP((2, 1)).forward(x, np.array([[3, 2, 3, 2]]))
    c0, c1 = x[0, 0, 2, 3], x[0, 1, 2, 3]
    assert y.tolist() == [[c0] * 4 + [c1] * 4 + [c0, c1]]


def test_window_spp_equals_spp_of_the_cropped_map(rng):
    x = distinct(rng, (1, 3, 9, 11))
    windows = np.array([[0, 0, 10, 8], [2, 1, 7, 5], [4, 4, 4, 8]])
    y = WindowSPP().forward(x, windows)
    for r, (x1, y1, x2, y2) in enumerate(windows):
        crop = np.ascontiguousarray(x[:, :, y1:y2 + 1, x1:x2 + 1])
        np.testing.assert_array_equal(y[r], SPP().forward(crop)[0])


def test_window_spp_pixel_windows_use_the_appendix_projection(rng):
    x = distinct(rng, (1, 2, 14, 14))
    boxes = np.array([[40, 33, 200, 100]], float)
    by_pixels = WindowSPP((3, 1), feature_stride=16).forward(x, boxes)
    by_cells = WindowSPP((3, 1)).forward(x, np.array([[3, 3, 12, 6]]))
    np.testing.assert_array_equal(by_pixels, by_cells)


def test_test_mode_forward_then_backward_still_works(rng):
    x = distinct(rng, (2, 3, 7, 7))
    for layer in (MaxPool(3, 2), SPP((3, 1))):
        y_eval = layer.forward(x, train=False)
        dx_eval = layer.backward(np.ones_like(y_eval))
        layer.forward(x, train=True)
        np.testing.assert_array_equal(dx_eval, layer.backward(np.ones_like(y_eval)))
    w = WindowSPP((2, 1))
    win = np.array([[0, 0, 6, 6], [1, 2, 3, 4]])
    y = w.forward(x[:1], win, train=False)
    dx_eval = w.backward(np.ones_like(y))
    w.forward(x[:1], win, train=True)
    np.testing.assert_array_equal(dx_eval, w.backward(np.ones_like(y)))


# -- float32 agrees with float64 -----------------------------------------------------------
def _layer_cases():
    return [
        ("conv", lambda: Conv(8, 5, 2, 1, name="conv", std=0.1), (2, 6, 15, 15), ()),
        ("pool", lambda: MaxPool(3, 2, ceil_mode=True), (2, 4, 11, 11), ()),
        ("lrn", lambda: LRN(5, 1e-4, 0.75, 1.0), (2, 7, 6, 6), ()),
        ("spp", lambda: SPP(), (2, 4, 13, 13), ()),
        ("wspp", lambda: WindowSPP(), (1, 4, 9, 12), (np.array([[0, 0, 11, 8], [2, 3, 6, 5]]),)),
        ("fc", lambda: FC(5, name="fc", std=0.1), (3, 20), ()),
        ("relu", lambda: ReLU(), (3, 20), ()),
    ]


@pytest.mark.parametrize("case", _layer_cases(), ids=lambda c: c[0])
def test_float32_matches_float64(case, rng):
    _, make, shape, args = case
    x64 = distinct(rng, shape, spacing=0.01)
    outs = {}
    for dtype in (np.float64, np.float32):
        params = Params(dtype)
        layer = make()
        layer.setup(shape, params, np.random.default_rng(3))
        y = layer.forward(x64.astype(dtype), *args)
        dx = layer.backward(np.ones_like(y))
        grads = [params[n].grad.copy() for n in layer.param_names]
        assert y.dtype == dtype and dx.dtype == dtype
        outs[dtype] = (y, dx, grads)
    for a, b in zip(outs[np.float32][:2], outs[np.float64][:2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(outs[np.float32][2], outs[np.float64][2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


# -- bad input -----------------------------------------------------------------------------
def test_wrong_rank_is_refused():
    with pytest.raises(ValueError, match=r"rank-4 .* shape \(3, 5\)"):
        MaxPool(2).forward(np.ones((3, 5)))
    with pytest.raises(ValueError, match="rank-4"):
        SPP().setup((2, 3, 4))


def test_channel_mismatch_is_refused():
    conv = Conv(4, 3, name="conv1")
    conv.setup((1, 3, 8, 8), Params())
    with pytest.raises(ValueError, match="'conv1': input has 5 channels, the layer was set up for 3"):
        conv.forward(np.ones((1, 5, 8, 8), np.float32))
    fc = FC(4, name="fc6")
    fc.setup((2, 12), Params())
    with pytest.raises(ValueError, match="'fc6': input .* 10 features per row"):
        fc.forward(np.ones((2, 10), np.float32))


def test_input_smaller_than_the_kernel_is_refused():
    with pytest.raises(ValueError, match="input 3x3 .* smaller than the 7x7 kernel"):
        Conv(2, 7, name="conv1").setup((1, 3, 3, 3), Params())


@pytest.mark.parametrize("layer", [ReLU(), MaxPool(2), LRN(), SPP((2, 1))], ids=lambda l: type(l).__name__)
def test_nan_input_is_refused_naming_the_element(layer):
    x = np.ones((1, 2, 4, 4), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(0, 1, 2, 3\)"):
        layer.forward(x)


def test_window_spp_bad_windows_are_refused():
    x = np.ones((1, 2, 5, 6))
    with pytest.raises(ValueError, match=r"window 1 \(3, 1, 2, 4\) has x2 < x1"):
        WindowSPP().forward(x, np.array([[0, 0, 1, 1], [3, 1, 2, 4]]))
    with pytest.raises(ValueError, match=r"window 0 \(0, 0, 6, 4\) lies outside .* 5x6"):
        WindowSPP().forward(x, np.array([[0, 0, 6, 4]]))
    with pytest.raises(ValueError, match=r"shape \(0, 4\)"):
        WindowSPP().forward(x, np.zeros((0, 4)))
    with pytest.raises(ValueError, match="batch of 2"):
        WindowSPP().forward(np.ones((2, 2, 5, 6)), np.array([[0, 0, 1, 1]]))


def test_softmax_loss_bad_labels_name_the_row():
    with pytest.raises(ValueError, match="label 7 in row 1 is outside"):
        SoftmaxLoss().forward(np.zeros((2, 4)), np.array([0, 7]))


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="float32 or float64"):
        ReLU().forward(np.ones((2, 3), np.int64))


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        LRN().backward(np.ones((1, 1, 1, 1)))


def test_layers_without_a_name_get_unique_names():
    params = Params()
    a, b = Conv(2, 3), Conv(2, 3)
    a.setup((1, 1, 5, 5), params)
    b.setup((1, 1, 5, 5), params)
    assert a.name != b.name and len(params) == 4


@pytest.mark.parametrize("kernel, stride, pad", [(7, 2, 1), (3, 1, 1), (5, 2, 0)])
def test_conv_in_bands_equals_the_whole_gemm(rng, monkeypatch, kernel, stride, pad):
    import layers.conv as conv_module
    params = Params(np.float64)
    conv = Conv(4, kernel, stride, pad, name="c", std=0.1)
    conv.setup((2, 3, 23, 19), params, rng)
    x = rng.standard_normal((2, 3, 23, 19))
    whole = conv.forward(x, train=True)
    monkeypatch.setattr(conv_module, "WORKSPACE_BYTES", 1)      # one output row per band
    assert conv.band_rows(x.dtype) == 1
    banded = conv.forward(x, train=False)
    np.testing.assert_allclose(banded, whole, rtol=1e-12, atol=1e-12)
