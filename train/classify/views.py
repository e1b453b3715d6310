"""How an image becomes network input, for training and for each test view (paper Sec. 3.1,
3.1.4-3.1.5; docs/design.md, "Input normalization").

Training (Sec. 3.1): resize so the shorter side is 256, a 224 x 224 crop from the center or
one of the four corners, a horizontal flip, PCA lighting noise, minus the mean image. Beyond
the paper, the result is divided by one scalar, the standard deviation of the mean-subtracted
training pixels (about 60 on the 0-255 scale): the He-initialized nets (nets.definitions)
assume unit-scale inputs, and on raw pixels conv1's weight gradients are thousands of times
larger than its weights, so SGD at the paper's rate 0.01 diverges within a few batches. A
180-pixel input is that 224 crop resized (same content, lower resolution; Sec. 2.3).
Test views: the center crop; the 10 views (5 crops and their flips); the full image with
its shorter side 256 (any aspect ratio up to minispp.data.transforms.MAX_ASPECT, 4:1, through an
SPP net at that size; a more elongated file is refused when it is read, naming it, and the
loaders report and skip it like an unreadable one: README, "Views").
"""
import numpy as np

from minispp.data.transforms import (CROP_POSITIONS, crop, flip, lighting, resize_min_side,
                                resize_to, to_input)

RESIZE = 256
CROP = 224
VIEWS = ("center", "10view", "full")


class InputMaker:
    """Callable (img, rng) -> float32 input for one use.

    kind: "train" (random crop/flip/lighting), "center", "10view" (-> (10, 3, 224, 224)),
    "full" (-> (3, h, w) with min(h, w) = 256). size: the square training input size.
    mean: (3, 224, 224) mean image or a scalar (128). pixel_scale: multiplies the mean-subtracted
    input (1 / pixel std). pca: (eigvals, eigvecs) or None.
    """

    def __init__(self, kind, mean, size=CROP, pca=None, lighting_std=0.1, pixel_scale=1.0):
        if kind not in ("train",) + VIEWS:
            raise ValueError(f"unknown view {kind!r}; expected train or one of {VIEWS}")
        self.kind, self.mean, self.size = kind, mean, int(size)
        self.pca, self.lighting_std, self.pixel_scale = pca, lighting_std, float(pixel_scale)

    def __call__(self, img, rng):
        img = resize_min_side(img, RESIZE)
        if self.kind == "full":
            return to_input(img, self.mean, self.pixel_scale)
        if self.kind == "10view":
            crops = [crop(img, CROP, pos) for pos in CROP_POSITIONS]
            return np.stack([to_input(c, self.mean, self.pixel_scale) for c in crops + [flip(c) for c in crops]])
        if self.kind == "center":
            return to_input(crop(img, CROP, "center"), self.mean, self.pixel_scale)
        out = crop(img, CROP, CROP_POSITIONS[rng.integers(len(CROP_POSITIONS))])
        if rng.random() < 0.5:
            out = flip(out)
        if self.size != CROP:
            out = resize_to(np.ascontiguousarray(out), self.size, self.size)
        out = out.astype(np.float32)
        if self.pca is not None and self.lighting_std > 0:
            out = lighting(out, self.pca[0], self.pca[1], rng, self.lighting_std)
        return to_input(out, self.mean, self.pixel_scale)
