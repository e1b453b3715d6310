"""Test views on the feature maps (paper Sec. 3.1.5, issue 14 item 1): each view's window on
conv5 against the Appendix projection, the flips, the s = 224 duplicates, and 10view-fm
against the 10 image crops on a net where the projection is exact."""
import math

import numpy as np
import pytest
from PIL import Image

import nets
from layers import FC, SPP, Conv, ReLU
from layers.softmax_loss import softmax
from minispp.data.imagefolder import ImageFolder
from minispp.data.transforms import min_side_shape, resize_min_side, to_input
from nets.definitions import DEFINITIONS
from nets.specs import Spec
from train.classify.evaluate import evaluate
from train.classify.multiview import (MULTIVIEW_SCALES, FeatureMapViews, mirror_windows,
                                      view_plan)


@pytest.fixture(scope="module")
def zf5():
    return nets.build("zf5", num_classes=10, rng=np.random.default_rng(0))


def appendix_cells(box, S, offset, map_hw):
    """The projection written out from the Appendix: left/top floor((x - o) / S) + 1,
    right/bottom ceil((x - o) / S) - 1, clipped to the map."""
    x1, y1, x2, y2 = box
    h, w = map_hw
    c = [math.floor((x1 - offset) / S) + 1, math.floor((y1 - offset) / S) + 1,
         math.ceil((x2 - offset) / S) - 1, math.ceil((y2 - offset) / S) - 1]
    return [min(max(c[0], 0), w - 1), min(max(c[1], 0), h - 1),
            min(max(c[2], 0), w - 1), min(max(c[3], 0), h - 1)]


def test_every_multiview_window_on_conv5_is_the_appendix_projection(zf5):
    views = FeatureMapViews(zf5, "multiview", 0.0)
    assert (views.stride, views.offset) == (16, 16.0)          # ZF-5: cell x' at pixel 16 + 16 x'
    H, W = 300, 400
    entries = views.windows((H, W))
    assert [(s, f) for s, f, _, _ in entries] == \
        [(s, f) for s in MULTIVIEW_SCALES for f in (False, True)] + [(256, False), (256, True)]
    for s, flipped, boxes, cells in entries:
        h, w = min_side_shape(H, W, s)
        map_hw = tuple(zf5.trunk((h, w)).out_shape[2:])
        if boxes is None:                                       # the full-image view
            assert cells.tolist() == [[0, 0, map_hw[1] - 1, map_hw[0] - 1]]
            continue
        assert np.all(boxes[:, 2] - boxes[:, 0] == 223) and np.all(boxes[:, 3] - boxes[:, 1] == 223)
        assert boxes.min() >= 0 and np.all(boxes[:, 2] <= w - 1) and np.all(boxes[:, 3] <= h - 1)
        for box, cell in zip(boxes, cells):
            assert cell.tolist() == appendix_cells(box, 16, 16.0, map_hw), (s, flipped, box)
    # at s = 256 (256 x 341, conv5 15 x 20): the center window x 58..281, y 16..239
    _, _, boxes, cells = entries[2]
    assert boxes[0].tolist() == [58, 16, 281, 239]
    assert cells[0].tolist() == [3, 1, 16, 13]                 # 14 x 13 cells
    assert tuple(zf5.trunk((256, 341)).out_shape[2:]) == (15, 20)


def test_the_mirror_views_are_the_mirrored_windows_on_the_mirror_images_map(zf5):
    views = FeatureMapViews(zf5, "multiview", 0.0)
    H, W = 300, 400
    entries = views.windows((H, W))
    for (s, f0, b0, _), (s1, f1, b1, c1) in zip(entries[0:12:2], entries[1:12:2]):
        assert s == s1 and not f0 and f1
        h, w = min_side_shape(H, W, s)
        # the same rows, the columns mirrored: x1' = w - 1 - x2, x2' = w - 1 - x1
        assert np.array_equal(b1[:, [1, 3]], b0[:, [1, 3]])
        assert np.array_equal(b1[:, 0], w - 1 - b0[:, 2]) and np.array_equal(b1[:, 2], w - 1 - b0[:, 0])
        map_hw = tuple(zf5.trunk((h, w)).out_shape[2:])
        for box, cell in zip(b1, c1):
            assert cell.tolist() == appendix_cells(box, 16, 16.0, map_hw)
    assert mirror_windows([[0, 5, 9, 20]], 30).tolist() == [[20, 5, 29, 20]]


def test_there_are_6_distinct_views_at_224_and_96_in_all():
    plan = view_plan("multiview", (300, 400))
    per_scale = {}
    for s, flipped, boxes in plan:
        if boxes is not None:
            per_scale[s] = per_scale.get(s, 0) + len(np.unique(boxes, axis=0))
    assert per_scale == {224: 6, 256: 18, 300: 18, 360: 18, 448: 18, 560: 18}
    assert sum(per_scale.values()) == 96
    assert sum(1 for _, _, b in plan if b is None) == 2              # + 2 full-image views: 98
    # at s = 224 (224 x 299) the three distinct windows start at x = 0, 37, 75
    at224 = next(b for s, f, b in plan if s == 224 and not f)
    assert sorted(at224[:, 0].tolist()) == [0, 37, 75] and set(at224[:, 1].tolist()) == {0}
    # a tall image: the duplicates are along the other axis
    tall = next(b for s, f, b in view_plan("multiview", (500, 300)) if s == 224 and not f)
    assert sorted(tall[:, 1].tolist()) == [0, 74, 149] and set(tall[:, 0].tolist()) == {0}
    # a square image: one window at s = 224 (two with the mirror), 94 views in all
    square = view_plan("multiview", (256, 256))
    assert sum(len(b) for _, _, b in square if b is not None) == 2 + 90


def test_ten_views_on_maps_are_the_ten_crops_windows():
    plan = view_plan("10view-fm", (256, 341))
    (s0, f0, b0), (s1, f1, b1) = plan
    assert (s0, f0, s1, f1) == (256, False, 256, True)
    # center, top-left, top-right, bottom-left, bottom-right of 256 x 341
    assert b0[:, :2].tolist() == [[58, 16], [0, 0], [117, 0], [0, 32], [117, 32]]
    assert b1[:, :2].tolist() == [[59, 16], [117, 0], [0, 0], [117, 32], [0, 32]]


# -- 10view-fm against 10view where the projection is exact ----------------------------------
def exact(num_classes=5, spp=(2, 1), form="appendix"):
    """Two non-overlapping 2x2 / 2 convs without padding: cell x' of conv2 sees exactly pixels
    4x' .. 4x' + 3 (S = 4, centre 1.5 + 4x'), so the cells of a crop's own map are the full
    map's cells under the crop, and the Appendix rule selects exactly those for a window
    starting at a multiple of 4 (floor((4k - 1.5) / 4) + 1 = k)."""
    return [Spec("conv1", Conv, out_channels=6, kernel=2, stride=2, std=0.5, bias=0.1),
            Spec("relu1", ReLU),
            Spec("conv2", Conv, out_channels=8, kernel=2, stride=2, std=0.5, bias=0.05),
            Spec("relu2", ReLU),
            Spec("spp5", SPP, levels=tuple(spp), form=form),
            Spec("fc6", FC, out_features=16, std=0.1, bias=0.1), Spec("relu6", ReLU),
            Spec("fc8", FC, out_features=num_classes, std=0.05)]


@pytest.fixture
def exact_model(monkeypatch):
    monkeypatch.setitem(DEFINITIONS, "exact", exact)
    return nets.Model("exact", {"num_classes": 5, "spp": (2, 1), "form": "appendix"},
                      rng=np.random.default_rng(3))


@pytest.fixture
def folder(tmp_path):
    """Images already at s = 256 (shorter side 256), 256 x 288 and 288 x 256: every 10-view
    crop starts at a multiple of 4 pixels, on the image and on its mirror."""
    rng = np.random.default_rng(5)
    val = tmp_path / "set" / "val"
    for i, hw in enumerate([(256, 288), (288, 256), (256, 288), (256, 256)]):
        (val / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8)).save(val / f"c{i % 2}/{i}.png")
    return val


def test_ten_views_on_maps_equal_the_ten_crops_where_the_projection_is_exact(exact_model, folder):
    ds = ImageFolder(str(folder))
    views = FeatureMapViews(exact_model, "10view-fm", 100.0, 1 / 60)
    for i in range(len(ds)):
        img, _ = ds.load(i)
        for s, f, boxes, cells in views.windows(img.shape[:2]):
            assert np.all((cells[:, 2:] - cells[:, :2] + 1) == 56)      # the crop's 56 x 56 map
        fm = views.view_probabilities(img)
        crops = evaluate_crops(exact_model, img, 100.0, 1 / 60)
        # float32 arithmetic in another order (GEMMs of other widths): a few ulps of the
        # probabilities, far below the change a window one cell off makes (checked next)
        np.testing.assert_allclose(fm, crops, atol=1e-5, rtol=0)
        assert 0.005 < crops.min() and crops.max() < 0.9         # not saturated: a real test
    # one cell off changes the probabilities by far more than the tolerance
    img, _ = ds.load(0)
    (s, f, boxes, cells), _ = views.windows(img.shape[:2])
    m = exact_model.trunk(img.shape[:2]).forward(to_input(img, 100.0, 1 / 60)[None]).copy()
    shifted = cells[:1] + np.array([1, 0, 1, 0])                   # the center view
    head = exact_model.instance(1)
    p_right = softmax(head.forward(views._pool(m, cells[:1]), start="fc6"))
    p_off = softmax(head.forward(views._pool(m, shifted), start="fc6"))
    assert np.abs(p_right - p_off).max() > 100 * 1e-5
    r_fm = evaluate(exact_model, ds, "10view-fm", 100.0, progress=False, pixel_scale=1 / 60)
    r_10 = evaluate(exact_model, ds, "10view", 100.0, progress=False, pixel_scale=1 / 60)
    assert (r_fm["top1"], r_fm["top5"]) == (r_10["top1"], r_10["top5"])
    assert r_fm["images"] == 4 and r_fm["views_per_image"] == 10 and r_fm["seconds_per_image"] > 0


def evaluate_crops(model, img, mean, pixel_scale):
    """(10, K) softmax of the 10 image crops, as the 10view view makes them."""
    from train.classify.views import InputMaker
    x = InputMaker("10view", mean, pixel_scale=pixel_scale)(img, None)
    return softmax(model.instance(10, (224, 224)).forward(x))


def test_the_full_image_views_of_multiview_are_the_full_view(exact_model, folder):
    ds = ImageFolder(str(folder))
    img, _ = ds.load(1)
    img = np.ascontiguousarray(img[:, :270])              # 288 x 270: resized at s = 256
    views = FeatureMapViews(exact_model, "multiview", 100.0, 1 / 60)
    probs = views.view_probabilities(img)
    assert len(probs) == 6 + 5 * 18 + 2
    full = resize_min_side(img, 256)
    for row, im in ((probs[-2], full), (probs[-1], full[:, ::-1])):
        x = to_input(im, 100.0, 1 / 60)[None]
        expect = softmax(exact_model.instance(1, x.shape[2:]).forward(x))[0]
        np.testing.assert_allclose(row, expect, atol=1e-6, rtol=0)
    np.testing.assert_allclose(views(img), probs.mean(axis=0))


def test_a_mean_image_is_warped_to_each_scale_as_the_full_view_does(exact_model, folder, monkeypatch):
    import train.classify.multiview as mv
    seen = []
    real = mv.to_input
    monkeypatch.setattr(mv, "to_input", lambda im, mean, ps: seen.append((im.shape, mean.shape)) or real(im, mean, ps))
    mean = np.random.default_rng(0).uniform(90, 130, (3, 224, 224)).astype(np.float32)
    img, _ = ImageFolder(str(folder)).load(0)
    p = FeatureMapViews(exact_model, "multiview", mean, 1 / 60).view_probabilities(img)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert len(seen) == 12 and all(m == (3, 224, 224) for _, m in seen)      # warped in to_input
    assert sorted({s[0] for s, _ in seen}) == sorted(MULTIVIEW_SCALES)


def test_a_net_without_spp_is_refused_clearly(folder):
    model = nets.build("small", num_classes=2, spp=None)
    for view in ("10view-fm", "multiview"):
        with pytest.raises(ValueError, match=f"the {view} view .* needs an SPP net"):
            evaluate(model, ImageFolder(str(folder)), view, 128.0, progress=False)


def test_command_line_multiview_and_10view_fm(tmp_path, folder, capsys):
    from tests.helpers import save_small
    from train.cli import main
    ckpt = save_small(tmp_path / "small.h5")
    import json
    (folder / "c0" / "broken.jpg").write_bytes(b"not a jpeg")         # reported and skipped
    for view in ("10view-fm", "multiview"):
        out = tmp_path / f"{view}.json"
        assert main(["test", "--checkpoint", ckpt, "--data", str(folder.parent), "--view", view,
                     "--json", str(out), "--quiet"]) == 0
        r = json.loads(out.read_text())
        assert r["images"] == 4 and r["skipped"] == 1 and 0 <= r["top5"] <= r["top1"] <= 1
        assert r["views_per_image"] == (10 if view == "10view-fm" else (3 * 98 + 94) / 4)
        text = capsys.readouterr()
        assert f"{view}: top-1 error" in text.out and "broken.jpg" in text.err
    nospp = nets.build("small", num_classes=10, spp=None)
    nospp.save(tmp_path / "nospp.h5", meta={"config": {"mean": 128.0}},
               extras={"pixel_std": np.array(60.0)})
    assert main(["test", "--checkpoint", str(tmp_path / "nospp.h5"), "--data", str(folder.parent),
                 "--view", "multiview", "--quiet"]) == 2
    assert "needs an SPP net" in capsys.readouterr().err
