"""Decoding odd images to 8-bit RGB as a viewer shows them (16-bit, float, EXIF orientation),
and the bound on how elongated an image may be (minispp.data.transforms.MAX_ASPECT)."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import save_small
from minispp.data.imagefolder import BadImage, load_rgb
from minispp.data.transforms import MAX_ASPECT, resize_min_side
from train.cli import main
from train.features.extract import view_input


def _png_rgb16(path, a):
    """Write (h, w, 3) uint16 as a 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_16_bit_grayscale_png_keeps_its_gradient(tmp_path):
    a = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (48, 1))
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    rgb = load_rgb(tmp_path / "g16.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], (a >> 8).astype(np.uint8))   # the high byte
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 120 <= rgb[0, 32, 0] <= 135


def test_a_16_bit_rgb_png_decodes_like_the_grayscale_one(tmp_path):
    a = np.zeros((6, 8, 3), np.uint16)
    a[..., 0], a[..., 1], a[..., 2] = 65535, 0x8000, 0x00FF
    _png_rgb16(tmp_path / "rgb16.png", a)
    rgb = load_rgb(tmp_path / "rgb16.png")
    assert rgb.shape == (6, 8, 3)
    assert rgb[3, 4].tolist() == [255, 128, 0]


def test_float_tiffs_are_normalised_and_nan_refused(tmp_path):
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit).save(tmp_path / "unit.tiff")
    assert Image.open(tmp_path / "unit.tiff").mode == "F"
    rgb = load_rgb(tmp_path / "unit.tiff")
    np.testing.assert_array_equal(rgb[..., 1], np.rint(unit * 255).astype(np.uint8))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and rgb[4, 0, 0] == 130
    wide = np.linspace(-1000, 3000, 64, dtype=np.float32).reshape(8, 8)     # min-max to 0-255
    Image.fromarray(wide).save(tmp_path / "wide.tiff")
    rgb = load_rgb(tmp_path / "wide.tiff")[..., 2]
    assert rgb.min() == 0 and rgb.max() == 255 and (np.diff(rgb.ravel().astype(int)) >= 0).all()
    bad = unit.copy()
    bad[2, 3] = np.nan
    Image.fromarray(bad).save(tmp_path / "nan.tiff")
    with pytest.raises(BadImage, match=r"nan\.tiff: 1 of its 64 pixels are NaN or infinite"):
        load_rgb(tmp_path / "nan.tiff")


def test_the_exif_orientation_is_applied_as_viewers_do(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 255))          # stored 30 wide, 10 high, blue
    img.paste((255, 0, 0), (0, 0, 10, 5))                  # red top-left block
    exif = Image.Exif()
    exif[0x0112] = 6                                       # "rotate 90 degrees clockwise to view"
    img.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    rgb = load_rgb(tmp_path / "turned.jpg")
    assert rgb.shape == (30, 10, 3)                        # upright: 10 wide, 30 high
    top_right, bottom_left = rgb[1, -2].astype(int), rgb[-2, 1].astype(int)
    assert top_right[0] > 200 and top_right[2] < 60        # the red block went to the top right
    assert bottom_left[2] > 200 and bottom_left[0] < 60


def test_a_decompression_bomb_is_a_bad_image(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)    # 64 x 64 is then over twice the limit
    with pytest.raises(BadImage, match="big.png"):
        load_rgb(tmp_path / "big.png")


def test_an_elongated_image_is_refused_naming_it_not_a_memory_error(tmp_path):
    Image.new("RGB", (10000, 20), (90, 90, 90)).save(tmp_path / "long.png")
    with pytest.raises(BadImage, match=r"long\.png: image 20x10000 .* more elongated than 4:1"):
        load_rgb(tmp_path / "long.png")
    Image.new("RGB", (80, 20)).save(tmp_path / "edge.png")          # exactly MAX_ASPECT: fine
    assert MAX_ASPECT == 4 and load_rgb(tmp_path / "edge.png").shape == (20, 80, 3)
    arr = np.zeros((20, 10000, 3), np.uint8)           # an array given directly is refused too
    with pytest.raises(ValueError, match="MAX_ASPECT"):
        resize_min_side(arr, 256)
    with pytest.raises(ValueError, match="MAX_ASPECT"):
        view_input(arr, "full", 256, 128.0)
    assert resize_min_side(np.zeros((20, 80, 3), np.uint8), 64).shape == (64, 256, 3)


def test_test_full_view_reports_and_skips_an_elongated_image(tmp_path, capsys):
    ckpt = save_small(tmp_path / "small.h5")
    rng = np.random.default_rng(0)
    sizes = {"a/1.png": (40, 30), "b/1.png": (30, 40), "b/long.png": (10000, 20)}   # (w, h)
    for rel, (w, h) in sizes.items():
        os.makedirs(tmp_path / "data" / "val" / os.path.dirname(rel), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "data" / "val" / rel)
    out = tmp_path / "r.json"
    assert main(["test", "--checkpoint", ckpt, "--data", str(tmp_path / "data"), "--view", "full",
                 "--workers", "1", "--quiet", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "long.png" in err and "more elongated than 4:1" in err
    r = json.load(open(out))
    assert r["images"] == 2 and r["skipped"] == 1
