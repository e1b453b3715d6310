"""The SPP-net detector's features (paper Sec. 4.1, Appendix): conv5 once per image and
scale, every window pooled from it.

1. Resize the image so min(w, h) = s, for each scale s (1 scale: 688; 5 scales: 480, 576,
   688, 864, 1200), and run the conv layers once: one conv5 map per scale.
2. For each window choose the single scale at which its area is closest to 224 x 224.
3. Project the window (pixels of that scaled image) onto conv5 with the Appendix rule and
   the net's real geometry (minispp.geometry.receptive_field: ZF-5's cell x' is centred on
   pixel 16 + 16 x'), and max-pool it with the pyramid {6, 3, 2, 1}: 12,800 values for ZF-5
   ("pool5" of the detector).
4. fc6 and fc7 run on those pooled vectors.

The conv5 maps are cached per image in HDF5 (float16, one file per image written through a
temporary file and a rename, with the model's checksum and the scales in the folder's
identity): a killed run keeps every finished image, and the pooled features of any window
are recomputed from the cached maps in milliseconds. (Caching the pooled vectors themselves
would take 2,000 x 12,800 values per image, 30 times the maps' size, and reading them back
is slower than pooling again.)
"""
import json
import os

import h5py
import numpy as np

from layers import WindowSPP
from minispp.checkpoint import atomic_h5
from minispp.feature_cache import check_identity
from minispp.names import inside
from minispp.transforms import resize_min_side, to_input

SINGLE_SCALE = (688,)
FIVE_SCALES = (480, 576, 688, 864, 1200)
LEVELS = (6, 3, 2, 1)
TARGET_AREA = 224 * 224


def scale_factors(image_hw, scales):
    """The resize factor of each scale: s / min(h, w)."""
    return np.array([s / min(image_hw) for s in scales], dtype=np.float64)


def choose_scales(boxes, image_hw, scales):
    """(R,) index into scales: where the window's scaled area is closest to 224 x 224."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    f = scale_factors(image_hw, scales)
    return np.argmin(np.abs(areas[:, None] * f[None, :] ** 2 - TARGET_AREA), axis=1)


def conv5_maps(model, img, scales, mean, pixel_scale):
    """{s: (1, C, h, w) float32 conv5 map} of a uint8 RGB image at every scale."""
    maps = {}
    for s in scales:
        x = to_input(resize_min_side(img, s), mean, pixel_scale)[None]
        maps[s] = model.trunk(x.shape[2:]).forward(x).copy()
    return maps


class WindowPooler:
    """Pools windows (image pixels) from per-scale conv5 maps with the Appendix projection."""

    def __init__(self, model, levels=LEVELS):
        self.stride, self.offset, _ = model.feature_geometry()
        self.levels = tuple(levels)
        self._layers = {}

    def _layer(self, shape):
        if shape not in self._layers:
            layer = WindowSPP(self.levels, feature_stride=self.stride, offset=self.offset)
            layer.setup(shape)
            self._layers[shape] = layer
        return self._layers[shape]

    def __call__(self, maps, boxes, image_hw, scales=None):
        """(R, C * sum n^2) float32 for boxes (R, 4) in original-image pixels."""
        pooled, inverse = self.unique(maps, boxes, image_hw, scales)
        return pooled[inverse]

    def unique(self, maps, boxes, image_hw, scales=None):
        """The pooled features of the distinct windows only, and where each window's row is.

        Windows pooled at the same scale whose projections land on the same conv5 cells pool
        exactly the same values, and so have the same fc6, fc7 and scores: at s = 688 about a
        fifth of 2,000 selective-search windows repeat another's cells. Each distinct one is
        pooled once here, and the caller runs the fc layers once per distinct row.

        Returns (pooled (U, D) float32, inverse (R,) int64): window r's features are
        pooled[inverse[r]].
        """
        scales = tuple(sorted(maps)) if scales is None else tuple(scales)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            raise ValueError("no window to pool")
        which = choose_scales(boxes, image_hw, scales)
        f = scale_factors(image_hw, scales)
        parts, inverse, done = [], np.empty(len(boxes), dtype=np.int64), 0
        for k, s in enumerate(scales):
            rows = np.flatnonzero(which == k)
            if rows.size == 0:
                continue
            layer = self._layer(maps[s].shape)
            scaled = boxes[rows] * f[k]
            _, first, inv = np.unique(layer.cells(scaled), axis=0, return_index=True,
                                      return_inverse=True)
            parts.append(layer.forward(maps[s], scaled[first], train=False))
            inverse[rows] = done + inv.reshape(-1)
            done += len(first)
        return np.concatenate(parts) if len(parts) > 1 else parts[0], inverse


class ConvCache:
    """folder/identity.json and folder/<image id>.h5 (/conv5/<s>: (C, h, w) float16; attrs
    height, width). get() computes what is missing."""

    def __init__(self, folder, model, scales, mean, pixel_scale):
        self.folder, self.model, self.scales = os.fspath(folder), model, tuple(int(s) for s in scales)
        self.mean, self.pixel_scale = mean, pixel_scale
        self.identity = {"checkpoint": model.checksum, "net": model.definition,
                         "scales": list(self.scales), "layer": "conv5", "dtype": "float16"}
        os.makedirs(self.folder, exist_ok=True)
        ident = os.path.join(self.folder, "identity.json")
        if os.path.exists(ident):
            try:
                with open(ident) as fh:
                    found = json.load(fh)
                if not isinstance(found, dict):
                    raise ValueError(f"a JSON {type(found).__name__}, not an object")
            except (OSError, ValueError) as err:
                raise ValueError(f"conv5 cache identity {ident} is damaged ({err}); delete "
                                 f"{self.folder} and run again to recompute it") from None
            check_identity(self.folder, found, self.identity,
                           advice="Remove the folder, or choose another one")
        else:
            tmp = ident + f".tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(self.identity, fh, indent=1)
            os.replace(tmp, ident)

    def path(self, image_id):
        """folder/<image id>.h5; an id that is not a plain file name is refused (BadName)."""
        return inside(self.folder, image_id, ".h5")

    def has(self, image_id):
        return os.path.exists(self.path(image_id))

    def get(self, image_id, load_image):
        """({s: (1, C, h, w) float32}, (H, W) of the original image)."""
        p = self.path(image_id)
        if os.path.exists(p):
            try:
                with h5py.File(p, "r") as f:
                    maps = {s: f[f"conv5/{s}"][...].astype(np.float32)[None] for s in self.scales}
                    return maps, (int(f.attrs["height"]), int(f.attrs["width"]))
            except (OSError, KeyError) as err:
                raise ValueError(f"conv5 cache {p} is damaged ({err}); delete it to recompute") from None
        img = load_image()
        maps = conv5_maps(self.model, img, self.scales, self.mean, self.pixel_scale)

        def write(f):
            for s, m in maps.items():
                f[f"conv5/{s}"] = m[0].astype(np.float16)
            f.attrs["height"], f.attrs["width"] = img.shape[:2]
        atomic_h5(p, write)
        # what later reads will see: the stored float16 values
        return {s: m.astype(np.float16).astype(np.float32) for s, m in maps.items()}, img.shape[:2]


class ScaleCaches:
    """The conv5 maps of several scales, one ConvCache folder per scale (folder_of(s)), so a
    1-scale and a 5-scale run share the maps at 688. get() decodes the image at most once."""

    def __init__(self, folder_of, model, scales, mean, pixel_scale):
        self.scales = tuple(int(s) for s in scales)
        self.caches = [ConvCache(folder_of(s), model, (s,), mean, pixel_scale) for s in self.scales]

    def has(self, image_id):
        return all(c.has(image_id) for c in self.caches)

    def get(self, image_id, load_image):
        """({s: (1, C, h, w) float32}, (H, W) of the original image)."""
        img = []

        def load_once():
            if not img:
                img.append(load_image())
            return img[0]
        maps, hw = {}, None
        for c in self.caches:
            m, hw = c.get(image_id, load_once)
            maps.update(m)
        return maps, hw


def scale_caches(workdir, model, scales, mean, pixel_scale, suffix=""):
    """ScaleCaches under workdir/conv5-<s><suffix>/ for each scale s."""
    return ScaleCaches(lambda s: os.path.join(workdir, f"conv5-{s}{suffix}"), model, scales,
                       mean, pixel_scale)


def scales_key(scales):
    """'480,576,688,864,1200': how a set of scales is named in files and on the command line."""
    return ",".join(str(int(s)) for s in scales)
