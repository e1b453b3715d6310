"""Image data sets in the layouts users have: ImageNet-style class folders.

    DIR/train/<class>/*.JPEG      DIR/val/<class>/*.JPEG

Any format Pillow decodes; grayscale, CMYK, palette and alpha images become RGB. A file that
cannot be decoded raises BadImage naming it; the loaders report it and skip it.
"""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")


class BadImage(ValueError):
    """An image file that cannot be read; .path names it."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path


def load_rgb(path):
    """The image at path as uint8 (H, W, 3) RGB. Alpha is composited on white."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            rgb = img.convert("RGB")
            return np.asarray(rgb)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise BadImage(path, err) from None


class ImageFolder:
    """Samples (path, label) of root/<class>/<image>, classes in sorted order.

    root: a split folder (e.g. DIR/train). classes: the class list to use (the training
    split's, so labels agree across splits); None: the sub-folders of root.
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
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    self.samples.append((os.path.join(folder, name), index[c]))
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
