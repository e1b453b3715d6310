"""Image folders, transforms, the batch loader and the embedded data set."""
import os

import numpy as np
import pytest
from PIL import Image

from minispp.data.imagefolder import BadImage, ImageFolder, load_rgb
from minispp.data.loader import BatchLoader
from minispp.data.transforms import crop, crop_box, resize_min_side, rgb_pca, to_input, warp_mean
from train.classify.views import InputMaker


def write_folder(root, images):
    """images: {"class/name.ext": PIL image or bytes}."""
    for rel, img in images.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(img, bytes):
            with open(path, "wb") as f:
                f.write(img)
        else:
            img.save(path)


def test_every_image_mode_becomes_rgb(tmp_path):
    gray = Image.fromarray(np.full((20, 30), 77, np.uint8), "L")
    rgba = Image.fromarray(np.dstack([np.full((10, 10, 3), 10, np.uint8), np.zeros((10, 10), np.uint8)]), "RGBA")
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))            # pure red in CMYK
    pal = Image.new("P", (5, 5), 3)
    write_folder(tmp_path, {"a/g.jpg": gray, "a/t.png": rgba, "b/c.jpg": cmyk, "b/p.png": pal})
    assert load_rgb(tmp_path / "a/g.jpg").shape == (20, 30, 3)
    assert load_rgb(tmp_path / "a/t.png")[0, 0].tolist() == [255, 255, 255]   # alpha 0 on white
    red = load_rgb(tmp_path / "b/c.jpg")[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert load_rgb(tmp_path / "b/p.png").shape == (5, 5, 3)


def test_image_folder_layout_labels_and_errors(tmp_path):
    img = Image.new("RGB", (4, 4))
    write_folder(tmp_path / "train", {"dog/1.jpg": img, "cat/1.png": img, "cat/2.JPEG": img,
                                      "cat/notes.txt": b"not an image"})
    write_folder(tmp_path / "val", {"dog/9.jpg": img})
    train = ImageFolder(tmp_path / "train")
    assert train.classes == ["cat", "dog"] and len(train) == 3
    assert train.labels().tolist() == [0, 0, 1]
    assert ImageFolder(tmp_path / "val", classes=train.classes).labels().tolist() == [1]
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(tmp_path / "test")
    write_folder(tmp_path / "val2", {"bird/1.jpg": img})
    with pytest.raises(ValueError, match=r"classes the training split does not: \['bird'\]"):
        ImageFolder(tmp_path / "val2", classes=train.classes)


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    img = Image.new("RGB", (4, 4))
    write_folder(tmp_path / "train", {"dog/1.jpg": img, "cat/notes.txt": b"not an image"})
    os.makedirs(tmp_path / "train" / "emu")
    with pytest.raises(ValueError, match=r"class folder .*train.cat has no images"):
        ImageFolder(tmp_path / "train")
    os.remove(tmp_path / "train" / "cat" / "notes.txt")
    os.rmdir(tmp_path / "train" / "cat")
    with pytest.raises(ValueError, match=r"class folder .*train.emu has no images"):
        ImageFolder(tmp_path / "train")


def test_corrupt_image_names_the_file(tmp_path):
    write_folder(tmp_path, {"a/bad.jpg": b"\xff\xd8\xff\xe0 truncated jpeg"})
    with pytest.raises(BadImage, match="bad.jpg"):
        load_rgb(tmp_path / "a/bad.jpg")


def test_resize_min_side_keeps_the_aspect_ratio():
    img = np.zeros((300, 500, 3), np.uint8)
    assert resize_min_side(img, 256).shape == (256, 427, 3)
    assert resize_min_side(np.zeros((640, 427, 3), np.uint8), 256).shape == (384, 256, 3)


def test_five_crops_are_the_center_and_corners():
    img = np.arange(10 * 12).reshape(10, 12, 1).repeat(3, axis=2).astype(np.uint8)
    assert crop_box(10, 12, 4, "center") == (3, 4)
    assert crop_box(10, 12, 4, "bottom-right") == (6, 8)
    assert crop(img, 4, "top-left")[0, 0, 0] == 0
    with pytest.raises(ValueError, match="smaller than the 16x16 crop"):
        crop(img, 16, "center")


def test_mean_subtraction_warps_the_mean_image():
    mean = np.stack([np.full((224, 224), v, np.float32) for v in (10, 20, 30)])
    x = to_input(np.full((180, 180, 3), 50, np.uint8), mean)
    assert x.shape == (3, 180, 180)
    np.testing.assert_allclose(x[:, 0, 0], [40, 30, 20], atol=1e-4)
    assert warp_mean(mean, 5, 7).shape == (3, 5, 7)
    assert to_input(np.full((2, 2, 3), 128, np.uint8), 128.0).max() == 0


def test_rgb_pca_finds_the_dominant_colour_axis():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 40, (64, 64, 1))
    img = np.clip(128 + t * np.array([1.0, 1.0, 0.0]) + rng.normal(0, 2, (64, 64, 3)), 0, 255)
    vals, vecs = rgb_pca([img.astype(np.uint8)])
    assert vals[0] > 20 * vals[1]
    np.testing.assert_allclose(np.abs(vecs[:, 0]), [0.7071, 0.7071, 0], atol=0.02)


def test_training_inputs_are_seeded_and_the_180_input_is_the_224_crop_resized():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 400, 3)).astype(np.uint8)
    make224 = InputMaker("train", 128.0, 224)
    a = make224(img, np.random.default_rng(5))
    b = make224(img, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 224, 224)
    assert InputMaker("train", 128.0, 180)(img, np.random.default_rng(5)).shape == (3, 180, 180)
    assert InputMaker("10view", 128.0)(img, None).shape == (10, 3, 224, 224)
    assert InputMaker("full", 128.0)(img, None).shape == (3, 256, 341)


class Numbers:
    """A data set whose sample i is an image filled with i; sample 3 is unreadable."""

    def load(self, i):
        if i == 3:
            raise BadImage(f"/data/{i}.jpg", "corrupt")
        return np.full((4, 4, 3), i, np.uint8), i % 2


def test_loader_order_skips_and_determinism():
    make = lambda img, rng: img[..., 0].astype(np.float32)[None] + rng.random()   # noqa: E731
    reports = []
    loader = BatchLoader(Numbers(), [5, 3, 1, 0, 2], 2, make, seed=(7,), workers=2,
                         report=reports.append)
    batches = [(b, x[:, 0, 0, 0].astype(int).tolist(), y.tolist()) for b, x, y in loader]
    assert batches == [(0, [5], [1]), (1, [1, 0], [1, 0]), (2, [2], [0])]
    assert loader.skipped == ["cannot read image /data/3.jpg: corrupt"] and len(reports) == 1
    again = [x for _, x, _ in BatchLoader(Numbers(), [5, 3, 1, 0, 2], 2, make, seed=(7,), workers=1)]
    first = [x for _, x, _ in BatchLoader(Numbers(), [5, 3, 1, 0, 2], 2, make, seed=(7,), workers=2)]
    for p, q in zip(again, first):
        np.testing.assert_array_equal(p, q)
    tail = [b for b, _, _ in BatchLoader(Numbers(), [5, 3, 1, 0, 2], 2, make, seed=(7,), start_batch=1)]
    assert tail == [1, 2]


def test_embedded_data_set_layout_and_determinism(tmp_path):
    from minispp.data.embedded import CLASSES, make_classification
    a = make_classification(tmp_path / "a", seed=3, train_per_class=2, val_per_class=1)
    b = make_classification(tmp_path / "b", seed=3, train_per_class=2, val_per_class=1)
    train = ImageFolder(os.path.join(a, "train"))
    assert train.classes == sorted(CLASSES) and len(train) == 20
    assert len(ImageFolder(os.path.join(a, "val"))) == 10
    sizes = {load_rgb(p).shape for p, _ in train.samples}
    assert len(sizes) > 5 and all(200 <= h <= 360 and 200 <= w <= 360 for h, w, _ in sizes)
    for (pa, _), (pb, _) in zip(train.samples, ImageFolder(os.path.join(b, "train")).samples):
        np.testing.assert_array_equal(load_rgb(pa), load_rgb(pb))
    assert make_classification(a, seed=3, train_per_class=2, val_per_class=1) == a   # reused
    with pytest.raises(ValueError, match="other arguments"):
        make_classification(a, seed=4, train_per_class=2, val_per_class=1)


def test_embedded_never_deletes_a_partial_folder_it_did_not_make(tmp_path, capsys):
    from train.cli import main
    mine = tmp_path / "x.partial"
    os.makedirs(mine)
    (mine / "thesis.tex").write_text("years of work")
    assert main(["embedded", "--out", str(tmp_path / "x"), "--train", "1", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert "x.partial exists and was not made by `minispp embedded`" in err
    assert (mine / "thesis.tex").read_text() == "years of work" and not (tmp_path / "x").exists()
    from minispp.data.embedded import PARTIAL_MARKER, _generate_once

    def write(folder):
        open(os.path.join(folder, "data.txt"), "w").close()
    stamp = {"seed": 0}
    # an interrupted generation of ours (marked) is redone; an empty folder is reused
    ours = tmp_path / "y.partial"
    os.makedirs(ours)
    (ours / PARTIAL_MARKER).write_text("{}")
    (ours / "half.jpg").write_text("")
    assert _generate_once(tmp_path / "y", stamp, write) == str(tmp_path / "y")
    assert sorted(os.listdir(tmp_path / "y")) == ["data.txt", "embedded.json"]
    assert not ours.exists()
    os.makedirs(tmp_path / "z.partial")
    _generate_once(tmp_path / "z", stamp, write)
    assert sorted(os.listdir(tmp_path / "z")) == ["data.txt", "embedded.json"]
    (tmp_path / "w.partial").write_text("a file")
    with pytest.raises(ValueError, match="w.partial exists and is not a folder"):
        _generate_once(tmp_path / "w", stamp, write)


def test_embedded_compose_returns_the_object_boxes():
    from minispp.data.embedded import _sources, compose
    sources, backgrounds = _sources()
    img, boxes = compose(np.random.default_rng(0), sources, backgrounds, [0, 5], (300, 260))
    assert img.shape == (300, 260, 3) and len(boxes) == 2
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 < 260 and 0 <= y1 < y2 < 300


def test_baseline_features_hand_computed():
    from train.classify.baselines import colour_histogram, tiny_center_crop
    red = np.zeros((10, 20, 3), np.uint8)
    red[..., 0] = 255
    h = colour_histogram(red)
    assert h.shape == (512,) and h[7 * 64] == 1.0 and h.sum() == 1.0
    assert tiny_center_crop(np.full((300, 400, 3), 51, np.uint8)).tolist() == [0.2] * 768
