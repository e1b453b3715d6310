"""The VOC devkit and Caltech101 readers on fixtures written here in the exact layouts, and
VOC07 classification AP on cases computed by hand."""
import os

import numpy as np
import pytest
from PIL import Image

from minispp.data.caltech import Caltech101, caltech_split
from minispp.data.embedded import make_voc
from minispp.data.voc import VOCDataset, annotation_xml, parse_annotation
from train.voc_eval import THRESHOLDS, classification_ap, classification_map, voc07_ap

XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>{id}.jpg</filename>
	<source><database>The VOC2007 Database</database></source>
	<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
	<segmented>0</segmented>
{objects}</annotation>
"""
OBJ = """	<object>
		<name>{name}</name>
		<pose>Left</pose>
		<truncated>{trunc}</truncated>
		<difficult>{diff}</difficult>
		<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
	</object>
"""

# id: (w, h, grayscale, [(name, truncated, difficult, box)])
IMAGES = {
    "000005": (50, 40, False, [("chair", 0, 0, (3, 4, 20, 30)), ("chair", 1, 1, (10, 10, 48, 39))]),
    "000007": (40, 50, True, [("car", 1, 0, (1, 1, 40, 50))]),
    "000009": (60, 45, False, [("dog", 0, 1, (5, 5, 30, 30)), ("person", 0, 0, (30, 2, 59, 44))]),
}
CLASS_FILES = {"car": {"000005": -1, "000007": 1, "000009": -1},
               "chair": {"000005": 1, "000007": -1, "000009": -1},
               "dog": {"000005": -1, "000007": -1, "000009": 0},
               "person": {"000005": -1, "000007": -1, "000009": 1}}


def write_devkit(root, class_files=True):
    folder = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, (w, h, gray, objs) in IMAGES.items():
        pixels = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, "JPEGImages", f"{image_id}.jpg"))
        body = "".join(OBJ.format(name=n, trunc=t, diff=d, x1=b[0], y1=b[1], x2=b[2], y2=b[3])
                       for n, t, d, b in objs)
        with open(os.path.join(folder, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(XML.format(id=image_id, w=w, h=h, objects=body))
    with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in IMAGES))
    if class_files:
        for c, table in CLASS_FILES.items():
            with open(os.path.join(folder, "ImageSets", "Main", f"{c}_trainval.txt"), "w") as f:
                f.write("".join(f"{i} {v:2d}\n" for i, v in table.items()))
    return folder


def test_voc_reader_reads_the_devkit_layout(tmp_path):
    folder = write_devkit(str(tmp_path))
    for root in (tmp_path, os.path.join(tmp_path, "VOCdevkit"), folder):
        ds = VOCDataset(root, "trainval")
        assert ds.ids == list(IMAGES)
    assert ds.classes == ["car", "chair", "dog", "person"]
    expect = np.array([[CLASS_FILES[c][i] for c in ds.classes] for i in IMAGES])
    np.testing.assert_array_equal(ds.labels(), expect)
    ann = ds.annotation(0)
    assert (ann["width"], ann["height"]) == (50, 40)
    assert [(o["name"], o["truncated"], o["difficult"], o["bbox"]) for o in ann["objects"]] == \
        IMAGES["000005"][3]
    assert ann["objects"][0]["pose"] == "Left"
    boxes, cls, diff = ds.object_boxes(0)
    np.testing.assert_array_equal(boxes[0], [2, 3, 19, 29])      # 0-based inclusive
    np.testing.assert_array_equal(cls, [1, 1])
    np.testing.assert_array_equal(diff, [False, True])
    img, labels = ds.load(1)                                     # the grayscale JPEG
    assert img.shape == (50, 40, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 2])
    np.testing.assert_array_equal(labels, expect[1])


def test_labels_from_annotations_when_the_class_lists_are_missing(tmp_path):
    write_devkit(str(tmp_path), class_files=False)
    ds = VOCDataset(tmp_path, "trainval", classes=["car", "chair", "dog", "person"])
    expect = np.array([[CLASS_FILES[c][i] for c in ds.classes] for i in IMAGES])
    np.testing.assert_array_equal(ds.labels(), expect)        # 0 for the difficult-only dog


def test_malformed_xml_and_missing_files_are_named(tmp_path):
    folder = write_devkit(str(tmp_path))
    bad = os.path.join(folder, "Annotations", "000007.xml")
    with open(bad, "w") as f:
        f.write("<annotation><filename>000007.jpg</filename><size><width>4")
    with pytest.raises(ValueError, match="000007.xml is not well-formed XML"):
        parse_annotation(bad)
    os.remove(bad)
    ds = VOCDataset(tmp_path, "trainval")
    with pytest.raises(ValueError, match="000007 of trainval has no annotation"):
        ds.annotation(1)
    os.remove(os.path.join(folder, "JPEGImages", "000009.jpg"))
    with pytest.raises(ValueError, match="000009.jpg"):
        ds.load(2)
    with open(os.path.join(folder, "Annotations", "000005.xml"), "w") as f:
        f.write(XML.format(id="000005", w=5, h=5, objects=OBJ.format(
            name="car", trunc=0, diff=0, x1=9, y1=1, x2=3, y2=4)))
    with pytest.raises(ValueError, match=r"000005.xml: object 'car' has box \(9, 1, 3, 4\)"):
        VOCDataset(tmp_path, "trainval").annotation(0)
    with open(os.path.join(folder, "ImageSets", "Main", "car_trainval.txt"), "w") as f:
        f.write("000005 -1\n000007 2\n000009 -1\n")
    with pytest.raises(ValueError, match="car_trainval.txt line 2"):
        VOCDataset(tmp_path, "trainval").labels()
    with pytest.raises(ValueError, match="not a VOC devkit"):
        VOCDataset(tmp_path / "nowhere", "trainval")


def test_written_annotations_read_back(tmp_path):
    objs = [{"name": "dog", "bbox": (1, 2, 30, 40), "difficult": 1, "truncated": 0}]
    path = tmp_path / "a.xml"
    path.write_text(annotation_xml("000001", 64, 48, objs))
    ann = parse_annotation(path)
    assert ann["filename"] == "000001.jpg" and (ann["width"], ann["height"]) == (64, 48)
    assert ann["objects"][0]["bbox"] == (1, 2, 30, 40) and ann["objects"][0]["difficult"] == 1


def test_embedded_voc_variant_is_a_devkit_with_boxes_and_flags(tmp_path):
    folder = make_voc(tmp_path / "voc", seed=0, trainval=12, test=6)
    tv, te = VOCDataset(folder, "trainval"), VOCDataset(folder, "test")
    assert (len(tv), len(te)) == (12, 6) and not set(tv.ids) & set(te.ids)
    objs = [o for i in range(len(tv)) for o in tv.annotation(i)["objects"]]
    assert len(objs) > 12                               # several objects per image
    assert any(o["truncated"] for o in objs)
    for i in range(len(tv)):
        ann, (img, labels) = tv.annotation(i), tv.load(i)
        assert img.shape == (ann["height"], ann["width"], 3)
        for o in ann["objects"]:
            x1, y1, x2, y2 = o["bbox"]
            assert 1 <= x1 <= x2 <= ann["width"] and 1 <= y1 <= y2 <= ann["height"]
    again = make_voc(tmp_path / "voc2", seed=0, trainval=12, test=6)
    assert open(os.path.join(again, "Annotations", "000003.xml")).read() == \
        open(os.path.join(folder, "Annotations", "000003.xml")).read()


def write_caltech(root, counts):
    rng = np.random.default_rng(1)
    for c, n in counts.items():
        d = os.path.join(root, "101_ObjectCategories", c)
        os.makedirs(d)
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
                os.path.join(d, f"image_{i:04d}.jpg"))


def test_caltech_reader_and_seeded_splits(tmp_path):
    write_caltech(str(tmp_path), {"BACKGROUND_Google": 33, "accordion": 90, "ant": 34})
    ds = Caltech101(tmp_path)
    assert ds.classes == ["BACKGROUND_Google", "accordion", "ant"]
    assert len(ds) == 157 and ds.ids[0] == os.path.join("BACKGROUND_Google", "image_0001.jpg")
    assert len(Caltech101(tmp_path, background=False).classes) == 2
    y = ds.labels()
    tr, te = caltech_split(y, 0)
    assert np.bincount(y[tr]).tolist() == [30, 30, 30]
    assert np.bincount(y[te]).tolist() == [3, 50, 4]            # up to 50 of the rest
    assert not set(tr) & set(te)
    tr2, _ = caltech_split(y, 0)
    tr3, _ = caltech_split(y, 1)
    assert np.array_equal(tr, tr2) and not np.array_equal(tr, tr3)
    with pytest.raises(ValueError, match="class 0 has 30 images"):
        caltech_split(np.repeat([0, 1], [30, 40]), 0)


# ---- VOC07 average precision, cases computed by hand -------------------------------------

def test_ap_of_a_simple_ranking():
    # ranks: +, -, +, -  ->  recall .5 .5 1 1, precision 1 .5 2/3 .5
    # t = 0 ... 0.5 (6 points): 1; t = 0.6 ... 1 (5 points): 2/3   ->  (6 + 10/3) / 11 = 28/33
    assert classification_ap([0.9, 0.8, 0.7, 0.6], [1, -1, 1, -1]) == pytest.approx(28 / 33, abs=1e-12)
    assert classification_ap([4, 3, 2, 1], [1, 1, -1, -1]) == pytest.approx(1.0)
    # ranks: -, -, +  ->  precision 1/3 at recall 1 for every point
    assert classification_ap([3, 2, 1], [-1, -1, 1]) == pytest.approx(1 / 3)


def test_ap_ignores_images_labelled_zero():
    # the 0 image ranks first and counts for nothing: AP 1. As a negative it would give 1/2.
    assert classification_ap([0.9, 0.8, 0.7], [0, 1, -1]) == pytest.approx(1.0)
    assert classification_ap([0.9, 0.8, 0.7], [-1, 1, -1]) == pytest.approx(0.5)


def test_ap_ties_keep_the_input_order():
    # equal scores: the devkit's stable sort keeps the negative first -> precision 1/2
    assert classification_ap([0.5, 0.5], [-1, 1]) == pytest.approx(0.5)
    assert classification_ap([0.5, 0.5], [1, -1]) == pytest.approx(1.0)


def test_ap_recall_exactly_on_a_threshold_follows_the_devkit():
    # 10 positives, one negative at rank 4: recall 3/10 at precision 1, then 10/11 at recall 1.
    # The devkit's 4th threshold is 0.1*3 > 3/10, so only t = 0, .1, .2 see precision 1:
    # (3 * 1 + 8 * 10/11) / 11 = 113/121 (exact arithmetic would give 114/121).
    labels = [1, 1, 1, -1] + [1] * 7
    scores = np.arange(len(labels), 0, -1)
    assert THRESHOLDS[3] > 0.3 and THRESHOLDS[7] == 0.7
    assert classification_ap(scores, labels) == pytest.approx(113 / 121, abs=1e-12)
    # recall 7/10 does reach the 0.7 point: 7 positives, a negative, 3 positives
    labels = [1] * 7 + [-1] + [1] * 3
    # t <= 0.7: precision 1 (8 points); t = .8, .9, 1: 10/11
    assert classification_ap(scores, labels) == pytest.approx((8 + 30 / 11) / 11, abs=1e-12)


def test_voc07_ap_from_a_curve_and_the_mean():
    assert voc07_ap([0.2, 0.4], [1.0, 0.5]) == pytest.approx((3 * 1.0 + 2 * 0.5) / 11)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.3]])
    labels = np.array([[1, -1], [-1, 1], [-1, -1]])
    r = classification_map(scores, labels, ["a", "b"])
    assert r["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    labels[1, 1] = -1
    r = classification_map(scores, labels, ["a", "b"])
    assert r["no_positives"] == ["b"] and r["mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="row 1 is 2"):
        classification_ap([1, 2], [1, 2])


# ---- hostile data: names that would become paths outside their folder, boxes off the image ------

def test_traversal_ids_are_refused_naming_the_list_and_line(tmp_path, capsys):
    from train.cli import main
    folder = write_devkit(str(tmp_path / "voc"))
    # JPEGImages/<id>.jpg and OUT/proposals/<id>.h5 would both land in tmp_path/evil
    evil = "../../../../evil/pic"
    os.makedirs(tmp_path / "evil")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "evil" / "pic.jpg")
    with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt"), "a") as f:
        f.write(f"{evil}\n")
    out = tmp_path / "a" / "b" / "out"
    before = sorted(os.listdir(tmp_path))
    assert main(["proposals", "--voc", folder, "--split", "trainval", "--out", str(out),
                 "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "trainval.txt line 4" in err and "'../../../../evil/pic'" in err
    assert os.listdir(tmp_path / "evil") == ["pic.jpg"]            # nothing written outside
    assert sorted(os.listdir(tmp_path)) == before
    for bad in ("/etc/passwd", "..", "a\\b"):
        with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt"), "w") as f:
            f.write(f"000005\n{bad}\n")
        with pytest.raises(ValueError, match=r"trainval.txt line 2: image id"):
            VOCDataset(folder, "trainval")
    with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in IMAGES))
    with open(os.path.join(folder, "ImageSets", "Main", "car_trainval.txt"), "a") as f:
        f.write("../x 1\n")
    with pytest.raises(ValueError, match=r"car_trainval.txt line 4: image id '../x'"):
        VOCDataset(folder, "trainval").labels()


def test_bad_class_names_are_refused(tmp_path):
    folder = write_devkit(str(tmp_path))
    main = os.path.join(folder, "ImageSets", "Main")
    with pytest.raises(ValueError, match="class name '../car'"):
        VOCDataset(folder, "trainval", classes=["../car", "dog"])
    open(os.path.join(main, "_trainval.txt"), "w").close()     # a class named ''
    with pytest.raises(ValueError, match=r"_trainval.txt: class name '' is empty"):
        VOCDataset(folder, "trainval")


def test_boxes_outside_the_image_are_clipped_with_a_warning_or_refused(tmp_path):
    from minispp.data.voc import BoxClipped
    path = tmp_path / "a.xml"
    objs = OBJ.format(name="dog", trunc=0, diff=0, x1=0, y1=5, x2=55, y2=30) + \
        OBJ.format(name="cat", trunc=0, diff=0, x1=3, y1=4, x2=20, y2=30)
    path.write_text(XML.format(id="000001", w=50, h=40, objects=objs))
    with pytest.warns(BoxClipped, match=r"a.xml: object 'dog' \(<object> 1\) has box \(0, 5, 55, 30\), "
                                        r"partly outside the 50 x 40 image: clipped to \(1, 5, 50, 30\)"):
        ann = parse_annotation(path)
    assert [o["bbox"] for o in ann["objects"]] == [(1, 5, 50, 30), (3, 4, 20, 30)]
    path.write_text(XML.format(id="000001", w=50, h=40, objects=OBJ.format(
        name="cat", trunc=0, diff=0, x1=3, y1=4, x2=20, y2=30) + OBJ.format(
        name="dog", trunc=0, diff=0, x1=60, y1=5, x2=90, y2=30)))
    with pytest.raises(ValueError, match=r"a.xml: object 'dog' \(<object> 2\) has box \(60, 5, 90, 30\), "
                                         r"wholly outside the 50 x 40 image"):
        parse_annotation(path)
    path.write_text(XML.format(id="000001", w=50, h=40, objects=OBJ.format(
        name="dog", trunc=0, diff=0, x1="nan", y1=5, x2=9, y2=30)))
    with pytest.raises(ValueError, match=r"a.xml: object 'dog' .* non-finite"):
        parse_annotation(path)


def test_empty_caltech_class_folder_is_refused(tmp_path):
    write_caltech(str(tmp_path), {"accordion": 2, "ant": 2})
    os.makedirs(tmp_path / "101_ObjectCategories" / "bee")
    with pytest.raises(ValueError, match=r"class folder .*bee has no images"):
        Caltech101(tmp_path)
