"""Two baselines that need no CNN, to show a data set is not solvable by colour alone or by
a fixed crop's raw pixels: a linear SVM on a global colour histogram (8x8x8 RGB bins of the
whole image), and a linear SVM on the center 224 crop shrunk to 16x16 pixels."""
import os

import numpy as np
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from minispp.data.imagefolder import BadImage, ImageFolder
from minispp.data.transforms import crop, resize_min_side, resize_to


def colour_histogram(img, bins=8):
    q = (img.reshape(-1, 3) // (256 // bins)).astype(np.int64)
    h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins ** 3)
    return h / h.sum()


def tiny_center_crop(img, side=16):
    c = crop(resize_min_side(img, 256), 224, "center")
    return resize_to(np.ascontiguousarray(c), side, side).reshape(-1) / 255.0


def features(dataset, fn):
    xs, ys = [], []
    for i in range(len(dataset)):
        try:
            img, label = dataset.load(i)
        except BadImage:
            continue
        xs.append(fn(img))
        ys.append(label)
    return np.array(xs), np.array(ys)


def baseline_accuracies(data, C=1.0):
    """{"colour histogram": top-1 accuracy, "16x16 center crop": top-1 accuracy} on val."""
    train = ImageFolder(os.path.join(data, "train"))
    val = ImageFolder(os.path.join(data, "val"), classes=train.classes)
    out = {}
    for name, fn in (("colour histogram", colour_histogram), ("16x16 center crop", tiny_center_crop)):
        xt, yt = features(train, fn)
        xv, yv = features(val, fn)
        scaler = StandardScaler().fit(xt)
        svm = LinearSVC(C=C, max_iter=5000).fit(scaler.transform(xt), yt)
        out[name] = float((svm.predict(scaler.transform(xv)) == yv).mean())
    return out
