"""Feature-map pictures (paper Fig. 2; issue 14 item 3): the strongest region found is the
pattern planted in one image, the maps are the layer's own outputs, the receptive fields
follow the net's geometry, and the picture is drawn (or refused clearly without matplotlib)."""
import sys

import numpy as np
import pytest
from PIL import Image

import nets
from layers import FC, SPP, Conv, ReLU
from minispp.data.transforms import to_input
from nets.definitions import DEFINITIONS
from nets.specs import Spec
from train.classify.visualize import (filter_responses, image_files, layer_geometry, render,
                                      visualize)


def red_detector(num_classes=2, spp=(1,), form="appendix"):
    """conv1 (2x2 / 2) and conv2 (2x2 / 2) without padding: conv2 cell (y, x) sees pixels
    4y..4y+3, 4x..4x+3 (S = 4, centre 1.5 + 4x, receptive field 4)."""
    return [Spec("conv1", Conv, out_channels=2, kernel=2, stride=2), Spec("relu1", ReLU),
            Spec("conv2", Conv, out_channels=3, kernel=2, stride=2), Spec("relu2", ReLU),
            Spec("spp5", SPP, levels=tuple(spp), form=form),
            Spec("fc8", FC, out_features=num_classes)]


@pytest.fixture
def detector(monkeypatch):
    """conv2 filter 1 = the sum of the red channel over its 4 x 4 pixels; filters 0 and 2
    are zero everywhere."""
    monkeypatch.setitem(DEFINITIONS, "red", red_detector)
    m = nets.Model("red", {"num_classes": 2, "spp": (1,), "form": "appendix"})
    for name in ("conv1", "conv2"):
        m.params[f"{name}.W"].value[...] = 0
        m.params[f"{name}.b"].value[...] = 0
    m.params["conv1.W"].value[0, 0] = 1.0          # red, all four taps
    m.params["conv2.W"].value[1, 0] = 1.0          # conv1's filter 0, all four taps
    return m


def dim_images(n=5, hw=(64, 80), seed=0):
    rng = np.random.default_rng(seed)
    return [(f"img{i}", rng.integers(0, 40, hw + (3,), dtype=np.uint8)) for i in range(n)]


def test_the_strongest_region_is_the_planted_pattern(detector):
    images = dim_images()
    images[3][1][20:28, 36:44, 0] = 255                      # a red 8 x 8 square in image 3
    images[1][1][4:8, 8:12, 0] = 200                         # a weaker one in image 1
    r = filter_responses(detector, images, layer="conv2", filters=[1], scale=64, top=3,
                         mean=0.0, pixel_scale=1 / 60)
    best, second, third = r.strongest[1]
    assert best.image == 3 and best.cell[0] in (5, 6) and best.cell[1] in (9, 10)
    x1, y1, x2, y2 = best.box                                # 4 x 4 pixels inside the square
    assert (x2 - x1, y2 - y1) == (3, 3) and 36 <= x1 and x2 <= 43 and 20 <= y1 and y2 <= 27
    assert best.value == pytest.approx(16 * 255 / 60, rel=1e-5)
    assert second.image == 1 and second.cell == (1, 2) and second.box == (8.0, 4.0, 11.0, 7.0)
    assert best.value > second.value > third.value and len({best.image, second.image, third.image}) == 3
    # without filters given, the one filter that responds at all is chosen
    assert filter_responses(detector, images, layer="conv2", scale=64, count=1, mean=0.0,
                            pixel_scale=1 / 60).filters == (1,)


def test_the_maps_are_the_layers_outputs_and_the_strongest_their_maxima():
    model = nets.build("small", num_classes=3, spp=(3, 2, 1), rng=np.random.default_rng(1))
    images = dim_images(4, (48, 40), seed=2)
    r = filter_responses(model, images, layer="conv2", filters=[4, 0], scale=48, top=4,
                         mean=100.0, pixel_scale=0.02)
    assert r.filters == (4, 0) and r.geometry == layer_geometry(model, "conv2")
    maxima = []
    for (_, img), im, maps in zip(images, r.images, r.maps):
        assert im.shape[:2] == (58, 48)                      # shorter side 48
        x = to_input(im, 100.0, 0.02)[None]
        direct = model.trunk(x.shape[2:]).forward(x, until="conv2")[0]
        np.testing.assert_array_equal(maps, direct[[4, 0]])
        maxima.append(direct[[4, 0]].reshape(2, -1).max(axis=1))
    maxima = np.array(maxima)
    for k, f in enumerate((4, 0)):
        regions = r.strongest[f]
        assert [g.image for g in regions] == list(np.argsort(-maxima[:, k], kind="stable"))
        for g in regions:
            assert g.value == maxima[g.image, k] == r.maps[g.image][k][g.cell]


def test_receptive_fields_follow_the_nets_geometry():
    zf5 = nets.build("zf5", num_classes=2)
    assert layer_geometry(zf5, "conv5") == zf5.feature_geometry() == (16, 16.0, 139)
    assert layer_geometry(zf5, "conv1") == (2, 2.0, 7)          # 7x7 / 2, pad 1: centre 3 - 1
    assert layer_geometry(zf5, "pool2") == (16, 16.0, 43)
    with pytest.raises(ValueError, match="'fc6' is not in zf5's conv layers"):
        layer_geometry(zf5, "fc6")


def test_the_picture_is_drawn_and_refused_clearly_without_matplotlib(detector, tmp_path, monkeypatch):
    images = dim_images(4)
    r = filter_responses(detector, images, layer="conv2", filters=[1, 2], scale=64, top=2,
                         mean=0.0, pixel_scale=1 / 60)
    out = tmp_path / "fig.png"
    render(r, str(out), maps=2)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if it were not installed
    with pytest.raises(ValueError, match=r"needs matplotlib: pip install 'minispp\[plots\]'"):
        render(r, str(tmp_path / "none.png"))
    with pytest.raises(ValueError, match="needs matplotlib"):
        visualize(detector, str(tmp_path), str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


def test_command_line_visualize(tmp_path, capsys):
    from tests.helpers import save_small
    from train.cli import main
    ckpt = save_small(tmp_path / "small.h5")
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i, (_, img) in enumerate(dim_images(3, (70, 90))):
        Image.fromarray(img).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert [p.rsplit("/", 1)[1] for p in image_files(str(tmp_path / "imgs"))] == \
        ["0.png", "1.png", "2.png", "broken.jpg"]
    out = tmp_path / "fig.png"
    assert main(["visualize", "--checkpoint", ckpt, "--images", str(tmp_path / "imgs"),
                 "--layer", "conv2", "--filters", "1,3", "--scale", "64", "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "filter 1: strongest" in text.out and "filter 3: strongest" in text.out
    assert "broken.jpg" in text.err and out.exists()
    assert main(["visualize", "--checkpoint", ckpt, "--images", str(tmp_path / "imgs"),
                 "--layer", "conv2", "--filters", "9", "--out", str(tmp_path / "x.png")]) == 2
    assert "filter 9 does not exist: conv2 has 5 filters (0..4)" in capsys.readouterr().err
    assert main(["visualize", "--checkpoint", ckpt, "--images", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
