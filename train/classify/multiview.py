"""Test views taken on the feature maps (paper Sec. 3.1.5, Appendix; docs/design.md, "Test
views on feature maps").

The conv layers run once on the whole image (and once on its mirror image) at a scale s, the
image resized so min(h, w) = s; each view, a window of that image in pixels, is projected
onto the last conv map with the Appendix rule and the net's real geometry
(``Model.feature_geometry()``, minispp.geometry.window_to_feature_map), max-pooled by the
net's own pyramid (layers.WindowSPP, the Appendix bin form) and sent through fc6-fc8; the
softmax outputs of the views are averaged.

``10view-fm``: the standard 10 views at s = 256 (the center and the four corners, each also
on the mirror image), the same 224 x 224 windows the ``10view`` crops take
(minispp.data.transforms.crop_box).

``multiview``: at each s in {224, 256, 300, 360, 448, 560}, the 224 x 224 windows at the
center, the four corners and the four side middles, each also on the mirror image: 18 views
a scale, 96 in all because at s = 224 one side is 224 pixels long and the nine windows
coincide in three; plus the 2 full-image views at s = 256 (the image and its mirror, the whole
map pooled, as the ``full`` view does): 98 views. Windows that coincide are taken once (a
square image has one distinct window at s = 224, two with the mirror: 94 views).

The input is (pixels - mean) * pixel_scale as in every view; the mean image is warped to the
size of the resized image, as the ``full`` view does (minispp.data.transforms.to_input).
"""
import numpy as np

from layers import WindowSPP
from layers.softmax_loss import softmax
from minispp.data.transforms import crop_box, flip, min_side_shape, resize_min_side, to_input
from minispp.geometry import window_to_feature_map

VIEW = 224                                       # the side of every window, in pixels
TEN_VIEW_SCALE = 256
MULTIVIEW_SCALES = (224, 256, 300, 360, 448, 560)
FULL_SCALE = 256                                 # the scale of the two full-image views
FEATURE_MAP_VIEWS = ("10view-fm", "multiview")
# the nine windows of a scale, (row, column) of a 3 x 3 grid: 0 top/left, 1 middle, 2 bottom/right
GRID = ((1, 1), (0, 0), (0, 2), (2, 0), (2, 2), (0, 1), (2, 1), (1, 0), (1, 2))


def ten_view_windows(h, w, size=VIEW):
    """(5, 4) float64 pixel windows (x1, y1, x2, y2, inclusive) of the center and the four
    corners of an h x w image: where train.classify.views' 10view crops are."""
    out = []
    for pos in ("center", "top-left", "top-right", "bottom-left", "bottom-right"):
        y, x = crop_box(h, w, size, pos)
        out.append((x, y, x + size - 1, y + size - 1))
    return np.array(out, dtype=np.float64)


def grid_windows(h, w, size=VIEW):
    """(R, 4) float64 pixel windows: the center, the four corners and the four side middles
    of an h x w image (GRID order), each distinct window once (R = 9, or 3 when one side
    is `size` long, or 1 for a size x size image)."""
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} is smaller than the {size}x{size} view")
    ys = (0, (h - size) // 2, h - size)
    xs = (0, (w - size) // 2, w - size)
    out = []
    for r, c in GRID:
        box = (xs[c], ys[r], xs[c] + size - 1, ys[r] + size - 1)
        if box not in out:
            out.append(box)
    return np.array(out, dtype=np.float64)


def mirror_windows(boxes, w):
    """The windows of the mirror image (flipped left-right) of a w pixels wide image that
    hold what `boxes` hold, flipped: x1' = w - 1 - x2, x2' = w - 1 - x1."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([w - 1 - b[:, 2], b[:, 1], w - 1 - b[:, 0], b[:, 3]], axis=1)


def view_plan(view, image_hw):
    """The views of one h x w image: [(s, flipped, boxes)], one entry per conv map. boxes:
    (R, 4) pixel windows of the image resized so min(h, w) = s (of its mirror image when
    flipped), or None for a full-image view (the whole map). A (s, flipped) pair may appear
    twice (multiview's s = 256: the crops, then the full image); its map is computed once."""
    H, W = int(image_hw[0]), int(image_hw[1])
    if view == "10view-fm":
        h, w = min_side_shape(H, W, TEN_VIEW_SCALE)
        boxes = ten_view_windows(h, w)
        return [(TEN_VIEW_SCALE, False, boxes), (TEN_VIEW_SCALE, True, mirror_windows(boxes, w))]
    if view == "multiview":
        plan = []
        for s in MULTIVIEW_SCALES:
            h, w = min_side_shape(H, W, s)
            boxes = grid_windows(h, w)
            plan += [(s, False, boxes), (s, True, mirror_windows(boxes, w))]
        return plan + [(FULL_SCALE, False, None), (FULL_SCALE, True, None)]
    raise ValueError(f"unknown feature-map view {view!r}; expected one of {FEATURE_MAP_VIEWS}")


def view_cells(boxes, map_hw, stride, offset):
    """(R, 4) int64 inclusive conv-map cells of pixel windows (the Appendix projection), or
    the whole (h, w) map as one window when boxes is None."""
    if boxes is None:
        return np.array([[0, 0, int(map_hw[1]) - 1, int(map_hw[0]) - 1]], dtype=np.int64)
    return window_to_feature_map(boxes, stride, map_hw, offset)


class FeatureMapViews:
    """Callable img -> (K,) averaged softmax of one view kind on the feature maps.

    model: an SPP nets.Model (a no-SPP net pools a fixed 6 x 6 and cannot take windows:
    ValueError). view: "10view-fm" or "multiview". mean, pixel_scale: the input
    normalization (model.input_normalization()).
    """

    def __init__(self, model, view, mean, pixel_scale=1.0):
        if view not in FEATURE_MAP_VIEWS:
            raise ValueError(f"unknown feature-map view {view!r}; expected one of {FEATURE_MAP_VIEWS}")
        if model.spp is None:
            raise ValueError(f"the {view} view pools windows of the conv maps with SPP and needs "
                             f"an SPP net; this {model.definition} has no SPP layer (--spp none)")
        self.model, self.view, self.mean, self.pixel_scale = model, view, mean, float(pixel_scale)
        self.stride, self.offset, _ = model.feature_geometry()
        self.levels = tuple(model.spp)
        self.head_start = model.specs[model.trunk_length + 1].name     # fc6
        self._pools = {}

    def map_shape(self, input_hw):
        """(h, w) of the last conv map for an input of input_hw pixels (no computation)."""
        return tuple(self.model.trunk(input_hw).out_shape[2:])

    def windows(self, image_hw):
        """[(s, flipped, boxes, cells)]: view_plan with each entry's conv-map cells."""
        out = []
        for s, flipped, boxes in view_plan(self.view, image_hw):
            hw = min_side_shape(int(image_hw[0]), int(image_hw[1]), s)
            out.append((s, flipped, boxes, view_cells(boxes, self.map_shape(hw), self.stride,
                                                      self.offset)))
        return out

    def _pool(self, fmap, cells):
        shape = fmap.shape
        if shape not in self._pools:
            layer = WindowSPP(self.levels)
            layer.setup(shape)
            self._pools[shape] = layer
        return self._pools[shape].forward(fmap, cells, train=False)

    def view_probabilities(self, img):
        """(V, K) softmax of every view of a uint8 (h, w, 3) image, in windows() order."""
        maps, resized, pooled = {}, {}, []
        for s, flipped, _, cells in self.windows(img.shape[:2]):
            if (s, flipped) not in maps:
                if s not in resized:
                    resized[s] = resize_min_side(img, s)
                im = flip(resized[s]) if flipped else resized[s]
                x = to_input(im, self.mean, self.pixel_scale)[None]
                # a copy: the mirror image's map comes from the same trunk instance
                trunk = self.model.trunk(x.shape[2:])
                maps[(s, flipped)] = trunk.forward(x).copy()
                trunk.release()                  # keeps no activations between views
            pooled.append(self._pool(maps[(s, flipped)], cells))
        head = self.model.instance(1)
        scores = head.forward(np.concatenate(pooled), start=self.head_start, train=False)
        return softmax(scores)

    def __call__(self, img):
        return self.view_probabilities(img).mean(axis=0)
