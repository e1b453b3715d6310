"""Caltech101 in its distributed layout (paper Sec. 3.3; docs/design.md, "Data set layouts").

    101_ObjectCategories/<class>/image_0001.jpg

102 folders (101 object classes and BACKGROUND_Google, which the paper counts as a class).
The protocol: 30 training images per class and up to 50 test images per class from the
rest, drawn at random; 10 such splits (seeds 0-9); mean per-class accuracy over classes,
then mean and standard deviation over the splits.
"""
import os

import numpy as np

from minispp.data.imagefolder import IMAGE_EXTENSIONS, load_rgb


def find_categories_folder(root):
    """The 101_ObjectCategories folder given it or its parent."""
    root = os.fspath(root)
    for cand in (os.path.join(root, "101_ObjectCategories"), root):
        if os.path.isdir(cand) and any(e.is_dir() for e in os.scandir(cand)):
            return cand
    raise ValueError(f"{root} is not Caltech101: expected {root}/101_ObjectCategories/<class>/image_XXXX.jpg")


class Caltech101:
    """Every image of the data set, classes in sorted folder order. background: keep the
    BACKGROUND_Google folder as a class (the paper's 102 categories) or drop it.
    load(i) -> (uint8 (H, W, 3) image, class index)."""

    BACKGROUND = "BACKGROUND_Google"

    def __init__(self, root, background=True):
        self.root = find_categories_folder(root)
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not background:
            classes = [c for c in classes if c != self.BACKGROUND]
        self.classes = classes
        self.samples = []
        for k, c in enumerate(classes):
            folder = os.path.join(self.root, c)
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                raise ValueError(f"Caltech101 class folder {folder} has no images")
            self.samples.extend((os.path.join(folder, n), k) for n in names)
        self.ids = [os.path.relpath(p, self.root) for p, _ in self.samples]

    def __len__(self):
        return len(self.samples)

    def labels(self):
        return np.array([k for _, k in self.samples], dtype=np.int64)

    def load(self, i):
        path, label = self.samples[i]
        return load_rgb(path), label


def caltech_split(labels, seed, train_per_class=30, test_per_class=50):
    """(train indices, test indices) of one random split: train_per_class images of every
    class for training and up to test_per_class of the remaining ones for testing. A class
    with no more than train_per_class images is an error (it would have no test images)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if len(idx) <= train_per_class:
            raise ValueError(f"class {k} has {len(idx)} images; a split needs more than "
                             f"{train_per_class} (train) to leave test images")
        idx = rng.permutation(idx)
        train.extend(idx[:train_per_class])
        test.extend(idx[train_per_class:train_per_class + test_per_class])
    return np.sort(np.array(train)), np.sort(np.array(test))
