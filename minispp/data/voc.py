"""The Pascal VOC devkit layout (docs/design.md, "Data set layouts"), read and written.

    VOCdevkit/VOC2007/JPEGImages/000005.jpg
    VOCdevkit/VOC2007/Annotations/000005.xml
    VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt          one image id per line
    VOCdevkit/VOC2007/ImageSets/Main/<class>_{trainval,test}.txt  "000005 -1" per line

An annotation names the image file and size and lists objects: class name, pose, truncated,
difficult and a bndbox of 1-based inclusive pixel coordinates (xmin, ymin, xmax, ymax). The
XML is parsed with the standard library. Image-level labels (the classification task) are
1 (the class is in the image), 0 (only `difficult` objects of it: ignored when scoring) and
-1 (absent); they are read from the per-class lists when the devkit has them and derived
from the annotations otherwise.

Boxes here are returned as the XML has them, 1-based inclusive; `object_boxes(..., zero_based=True)`
gives 0-based inclusive pixels. A box reaching past the image's <size> is clipped to it with
a BoxClipped warning naming the file and object; one with no pixel in the image is an error
naming them. Image ids and class names become file names, so one that is not a plain file
name (minispp.data.names: no '/', '\\', '..', NUL, not absolute) is an error naming the list
file and line.
"""
import os
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from minispp.data.imagefolder import load_rgb
from minispp.data.names import check_name

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def find_year_folder(root, year="2007"):
    """The VOC<year> folder given it, its VOCdevkit parent, or the folder holding VOCdevkit."""
    root = os.fspath(root)
    for cand in (root, os.path.join(root, f"VOC{year}"), os.path.join(root, "VOCdevkit", f"VOC{year}")):
        if os.path.isdir(os.path.join(cand, "Annotations")) and os.path.isdir(os.path.join(cand, "ImageSets")):
            return cand
    raise ValueError(f"{root} is not a VOC devkit: expected {root}/VOCdevkit/VOC{year}/"
                     f"{{JPEGImages,Annotations,ImageSets/Main}} (or the VOC{year} folder itself)")


def _text(node, tag, path, cast=str, default=None):
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise ValueError(f"annotation {path}: <{node.tag}> has no <{tag}>")
    try:
        return cast(child.text.strip())
    except ValueError:
        raise ValueError(f"annotation {path}: <{tag}> is {child.text.strip()!r}, "
                         f"not a {cast.__name__}") from None


def parse_annotation(path):
    """{'filename', 'width', 'height', 'depth', 'objects': [{'name', 'pose', 'truncated',
    'difficult', 'bbox': (xmin, ymin, xmax, ymax) 1-based inclusive}]} of one XML file.
    A malformed file, a missing field or an impossible box raises ValueError naming the file;
    a box partly outside the image is clipped to it (BoxClipped warning)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"annotation {path} is not well-formed XML: {err}") from None
    except OSError as err:
        raise ValueError(f"annotation {path} cannot be read: {err}") from None
    if root.tag != "annotation":
        raise ValueError(f"annotation {path}: root element is <{root.tag}>, not <annotation>")
    size = root.find("size")
    if size is None:
        raise ValueError(f"annotation {path}: no <size>")
    ann = {"filename": _text(root, "filename", path),
           "width": _text(size, "width", path, int), "height": _text(size, "height", path, int),
           "depth": _text(size, "depth", path, int, 3), "objects": []}
    W, H = ann["width"], ann["height"]
    if W < 1 or H < 1:
        raise ValueError(f"annotation {path}: image size {W} x {H} is not positive")
    for number, obj in enumerate(root.findall("object"), 1):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"annotation {path}: an <object> has no <bndbox>")
        # real VOC files have integer boxes; a few tools write "48.0"
        values = [_text(box, k, path, float) for k in ("xmin", "ymin", "xmax", "ymax")]
        if not all(np.isfinite(values)):
            raise ValueError(f"annotation {path}: object {_text(obj, 'name', path)!r} "
                             f"(<object> {number}) has box {tuple(values)} with a non-finite value")
        bbox = tuple(int(round(v)) for v in values)
        if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
            raise ValueError(f"annotation {path}: object {_text(obj, 'name', path)!r} has box "
                             f"{bbox} with xmax < xmin or ymax < ymin")
        bbox = _inside_image(bbox, W, H, path, _text(obj, "name", path), number)
        ann["objects"].append({
            "name": _text(obj, "name", path).strip().lower(),
            "pose": _text(obj, "pose", path, str, "Unspecified"),
            "truncated": _text(obj, "truncated", path, int, 0),
            "difficult": _text(obj, "difficult", path, int, 0),
            "bbox": bbox})
    return ann


class BoxClipped(UserWarning):
    """An annotated box partly outside its image, clipped to it."""


def _inside_image(bbox, width, height, path, name, number):
    """bbox (1-based inclusive) clipped to the width x height image, with a BoxClipped
    warning naming the file and object when it reached outside; a box with no pixel in the
    image is a ValueError naming them."""
    x1, y1, x2, y2 = bbox
    where = f"annotation {path}: object {name!r} (<object> {number}) has box {bbox}"
    if x1 > width or y1 > height or x2 < 1 or y2 < 1:
        raise ValueError(f"{where}, wholly outside the {width} x {height} image "
                         f"(1-based pixels 1..{width}, 1..{height})")
    clipped = (max(x1, 1), max(y1, 1), min(x2, width), min(y2, height))
    if clipped != bbox:
        warnings.warn(f"{where}, partly outside the {width} x {height} image: clipped to "
                      f"{clipped}", BoxClipped, stacklevel=3)
    return clipped


def _read_ids(path):
    """The image ids of a list, first word of each non-blank line; an id that cannot be a
    file name (minispp.data.names) is an error naming the list and line."""
    try:
        with open(path) as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"image set {path} cannot be read: {err}") from None
    return [check_name(line.split()[0], f"{path} line {n}")
            for n, line in enumerate(lines, 1) if line.strip()]


def _read_class_list(path, ids):
    """{id: label} from '<id> <label>' lines; every label 1, 0 or -1."""
    out = {}
    try:
        with open(path) as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"class list {path} cannot be read: {err}") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
            raise ValueError(f"{path} line {n}: expected '<image id> 1|0|-1', got {line.strip()!r}")
        check_name(parts[0], f"{path} line {n}")
        out[parts[0]] = int(parts[1])
    missing = [i for i in ids if i not in out]
    if missing:
        raise ValueError(f"{path} has no label for {len(missing)} image(s) of the split, "
                         f"e.g. {missing[0]}")
    return out


class VOCDataset:
    """One split of a VOC devkit: images, annotations and image-level labels.

    root: the VOC<year> folder, VOCdevkit, or the folder holding VOCdevkit. split: an image
    set in ImageSets/Main (trainval, test, train, val). classes: the class names; by default
    the per-class lists present for the split, else the 20 VOC classes.
    load(i) -> (uint8 (H, W, 3) image, (K,) int8 labels in {1, 0, -1}).
    """

    def __init__(self, root, split="trainval", year="2007", classes=None):
        self.folder = find_year_folder(root, year)
        self.root, self.split, self.year = self.folder, split, year
        main = os.path.join(self.folder, "ImageSets", "Main")
        check_name(split, f"the split of {self.folder}", "split name")
        set_path = os.path.join(main, f"{split}.txt")
        if not os.path.exists(set_path):
            raise ValueError(f"{self.folder} has no image set {set_path}")
        self.ids = _read_ids(set_path)
        if not self.ids:
            raise ValueError(f"image set {set_path} is empty")
        if classes is None:
            suffix = f"_{split}.txt"
            found = sorted(n[:-len(suffix)] for n in os.listdir(main)
                           if n.endswith(suffix) and n != f"{split}.txt")
            for c in found:
                check_name(c, os.path.join(main, f"{c}{suffix}"), "class name")
            classes = found or list(VOC_CLASSES)
        for c in classes:
            check_name(c, f"the class list of {self.folder}", "class name")
        self.classes = list(classes)
        self._annotations = {}
        self._labels = None

    def __len__(self):
        return len(self.ids)

    def image_path(self, i):
        return os.path.join(self.folder, "JPEGImages", f"{self.ids[i]}.jpg")

    def annotation(self, i):
        """The parsed XML of image i (cached)."""
        if i not in self._annotations:
            path = os.path.join(self.folder, "Annotations", f"{self.ids[i]}.xml")
            if not os.path.exists(path):
                raise ValueError(f"image {self.ids[i]} of {self.split} has no annotation {path}")
            ann = self._annotations[i] = parse_annotation(path)
            unknown = sorted({o["name"] for o in ann["objects"]} - set(self.classes))
            if unknown:
                raise ValueError(f"annotation {path} has objects of unknown classes {unknown}; "
                                 f"classes are {self.classes}")
        return self._annotations[i]

    def object_boxes(self, i, zero_based=True):
        """(boxes (M, 4) float64 x1 y1 x2 y2, class indices (M,), difficult (M,) bool)."""
        objs = self.annotation(i)["objects"]
        boxes = np.array([o["bbox"] for o in objs], dtype=np.float64).reshape(-1, 4)
        if zero_based:
            boxes -= 1
        cls = np.array([self.classes.index(o["name"]) for o in objs], dtype=np.int64)
        diff = np.array([bool(o["difficult"]) for o in objs], dtype=bool)
        return boxes, cls, diff

    def labels(self):
        """(N, K) int8 image-level labels: from ImageSets/Main/<class>_<split>.txt when all
        are there, else from the annotations (1: a non-difficult object, 0: only difficult)."""
        if self._labels is None:
            main = os.path.join(self.folder, "ImageSets", "Main")
            paths = [os.path.join(main, f"{c}_{self.split}.txt") for c in self.classes]
            lab = np.full((len(self.ids), len(self.classes)), -1, dtype=np.int8)
            if all(os.path.exists(p) for p in paths):
                for k, p in enumerate(paths):
                    table = _read_class_list(p, self.ids)
                    lab[:, k] = [table[i] for i in self.ids]
            else:
                for n in range(len(self.ids)):
                    lab[n] = labels_from_objects(self.annotation(n)["objects"], self.classes)
            self._labels = lab
        return self._labels

    def load(self, i):
        return load_rgb(self.image_path(i)), self.labels()[i]


def labels_from_objects(objects, classes):
    """(K,) int8: 1 if a non-difficult object of the class, 0 if only difficult ones, else -1."""
    lab = np.full(len(classes), -1, dtype=np.int8)
    for o in objects:
        k = classes.index(o["name"])
        lab[k] = max(lab[k], 0 if o["difficult"] else 1)
    return lab


def annotation_xml(image_id, width, height, objects, folder="VOC2007"):
    """The XML text of one annotation, in the devkit's element order. objects: dicts with
    name, bbox (1-based inclusive), and optionally pose, truncated, difficult."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(int(v))
    ET.SubElement(root, "segmented").text = "0"
    for o in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = o["name"]
        ET.SubElement(node, "pose").text = o.get("pose", "Unspecified")
        ET.SubElement(node, "truncated").text = str(int(o.get("truncated", 0)))
        ET.SubElement(node, "difficult").text = str(int(o.get("difficult", 0)))
        box = ET.SubElement(node, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o["bbox"]):
            ET.SubElement(box, k).text = str(int(v))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_image_sets(folder, split, ids, objects_per_image, classes):
    """ImageSets/Main/<split>.txt and <class>_<split>.txt (labels as the devkit defines)."""
    main = os.path.join(folder, "ImageSets", "Main")
    os.makedirs(main, exist_ok=True)
    with open(os.path.join(main, f"{split}.txt"), "w") as f:
        f.writelines(f"{i}\n" for i in ids)
    labels = np.stack([labels_from_objects(objs, list(classes)) for objs in objects_per_image])
    for k, c in enumerate(classes):
        with open(os.path.join(main, f"{c}_{split}.txt"), "w") as f:
            f.writelines(f"{i} {int(v):2d}\n" for i, v in zip(ids, labels[:, k]))
