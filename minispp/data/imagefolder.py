"""Image data sets in the layouts users have: ImageNet-style class folders.

    DIR/train/<class>/*.JPEG      DIR/val/<class>/*.JPEG

Any format Pillow decodes; grayscale, CMYK, palette and alpha images become RGB. A file that
cannot be decoded raises BadImage naming it; the loaders report it and skip it.
"""
import os
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")


class BadImage(ValueError):
    """An image file that cannot be read; .path names it."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, str(reason)

    def __reduce__(self):              # survives the trip back from a worker process
        return (BadImage, (self.path, self.reason))


def load_rgb(path):
    """The image at path as uint8 (H, W, 3) RGB, the way an image viewer shows it.

    - The EXIF orientation is applied (PIL.ImageOps.exif_transpose): a photo taken with the
      camera turned comes out upright, as viewers show it, not as its pixels are stored.
    - Alpha (RGBA, LA, PA, a palette's or a PNG's transparent colour) is composited on white.
    - 16-bit samples (Pillow modes I;16*: 16-bit grayscale PNG, TIFF) keep their high byte
      (v >> 8), which is how Pillow itself decodes a 16-bit RGB PNG to RGB, so both decode
      alike. 32-bit integer images (mode I, e.g. 16-bit PGM) with values in [0, 65535] are
      taken as 16-bit samples too.
    - Floating-point images (mode F, e.g. a float32 TIFF): values all in [0, 1] are scaled
      by 255; any other range is stretched linearly from [min, max] to [0, 255] (a constant
      image outside [0, 1] is clipped to [0, 255]). Mode I outside [0, 65535] is stretched
      the same way. An image with NaN or infinite values is refused.
    - An image more elongated than minispp.data.transforms.MAX_ASPECT is refused: every view
      resizes the shorter side to s, and such an image would be too long (README, Views).

    Whatever cannot be decoded so raises BadImage (a ValueError) naming the file.
    """
    from minispp.data.transforms import check_aspect
    try:
        with Image.open(path) as img:
            check_aspect(img.height, img.width)     # from the header, before decoding
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "F" or img.mode == "I" or img.mode.startswith("I;16"):
                img = Image.fromarray(_gray_to_uint8(np.asarray(img), img.mode), "L")
            elif img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            rgb = img.convert("RGB")
            return np.asarray(rgb)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error,
            Image.DecompressionBombError) as err:
        raise BadImage(path, err) from None


def _gray_to_uint8(a, mode):
    """uint8 of one band of 16-bit, 32-bit integer or float samples (load_rgb's rules)."""
    if mode.startswith("I;16"):
        return (a.astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I" and a.min() >= 0 and a.max() <= 65535:
        return (a >> 8).astype(np.uint8)
    f = a.astype(np.float64)
    if not np.isfinite(f).all():
        raise ValueError(f"{np.count_nonzero(~np.isfinite(f))} of its {f.size} pixels are NaN or "
                         f"infinite")
    lo, hi = float(f.min()), float(f.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        f = f * 255.0
    elif hi > lo:
        f = (f - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(f, 0.0, 255.0)).astype(np.uint8)


class ImageFolder:
    """Samples (path, label) of root/<class>/<image>, classes in sorted order.

    root: a split folder (e.g. DIR/train). classes: the class list to use (the training
    split's, so labels agree across splits); None: the sub-folders of root. A class folder
    with no image files is an error naming it (it would be a class that is never seen).
    """

    def __init__(self, root, classes=None):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"data folder {self.root} does not exist")
        found = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not found:
            raise ValueError(f"data folder {self.root} has no class sub-folders "
                             f"(expected {self.root}/<class>/<image files>)")
        if classes is None:
            classes = found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{self.root} has classes the training split does not: {unknown[:5]}")
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in found:
            folder = os.path.join(self.root, c)
            names = [n for n in sorted(os.listdir(folder)) if n.lower().endswith(IMAGE_EXTENSIONS)]
            if not names:                  # a class with no images would train and score wrong
                raise ValueError(f"class folder {folder} has no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
            self.samples.extend((os.path.join(folder, n), index[c]) for n in names)
        if not self.samples:
            raise ValueError(f"data folder {self.root} has no images ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self):
        return len(self.samples)

    def labels(self):
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def load(self, i):
        """(uint8 (H, W, 3) image, label) of sample i; BadImage if it cannot be read."""
        path, label = self.samples[i]
        return load_rgb(path), label
