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
from tqdm import tqdm

from layers import WindowSPP
from minispp import distributed
from minispp.backend import module_of, to_numpy
from minispp.data.names import inside
from minispp.data.transforms import resize_min_side, to_input
from minispp.detection.boxes import iou
from minispp.detection.proposals import ProposalCache
from minispp.lru import LRUCache
from minispp.storage.checkpoint import atomic_h5
from minispp.storage.feature_cache import check_identity

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
        trunk = model.trunk(x.shape[2:])
        maps[s] = trunk.forward(x).copy()
        trunk.release()              # the cached instance keeps no activations
    return maps


class WindowPooler:
    """Pools windows (image pixels) from per-scale conv5 maps with the Appendix projection,
    on the model's device (host maps in, host features out: a GPU model's maps are copied to
    the device and every window of a scale is pooled there in one launch)."""

    def __init__(self, model, levels=LEVELS):
        self.stride, self.offset, _ = model.feature_geometry()
        self.levels = tuple(levels)
        self.xp = module_of(model.device)
        self._layers = LRUCache(self.MAX_LAYERS)

    MAX_LAYERS = 16          # WindowSPP layers kept, one per conv5 map shape (least recent out)

    def _layer(self, shape):
        """The WindowSPP layer set up for maps of `shape`: every image size gives a shape of
        its own, so at most MAX_LAYERS are kept (they hold no parameters), and each forward's
        retained input is released after it (pooled features need no backward here)."""
        def make():
            layer = WindowSPP(self.levels, feature_stride=self.stride, offset=self.offset)
            layer.setup(shape)
            return layer
        return self._layers.get_or_make(shape, make)

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
            fmap = self.xp.asarray(maps[s])
            parts.append(to_numpy(layer.forward(fmap, scaled[first], train=False)))
            layer.release()              # it retained the map: one per image and scale else
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


class DirectConv:
    """conv5 maps computed when asked and never written: the test-time mode that pools
    windows straight from conv5 (`detect-test --no-conv-cache`), for a test split whose maps
    are read once (1.25 MB for a 500 x 375 image at s = 688 in float16, 8.5 MB at the five scales:
    docs/design.md, "Memory and disk"). The maps are rounded to float16 as the cache stores
    them, so scores are those of the cached path, bit for bit."""

    def __init__(self, model, scales, mean, pixel_scale):
        self.model, self.scales = model, tuple(int(s) for s in scales)
        self.mean, self.pixel_scale = mean, pixel_scale

    def has(self, image_id):
        return False

    def get(self, image_id, load_image):
        """({s: (1, C, h, w) float32}, (H, W) of the original image)."""
        img = load_image()
        maps = conv5_maps(self.model, img, self.scales, self.mean, self.pixel_scale)
        return {s: m.astype(np.float16).astype(np.float32) for s, m in maps.items()}, img.shape[:2]


def scale_caches(workdir, model, scales, mean, pixel_scale, suffix="", write=True):
    """ScaleCaches under workdir/conv5-<s><suffix>/ for each scale s (write=False: a
    DirectConv, computing every map and writing none)."""
    if not write:
        return DirectConv(model, scales, mean, pixel_scale)
    return ScaleCaches(lambda s: os.path.join(workdir, f"conv5-{s}{suffix}"), model, scales,
                       mean, pixel_scale)


def scales_key(scales):
    """'480,576,688,864,1200': how a set of scales is named in files and on the command line."""
    return ",".join(str(int(s)) for s in scales)


# ---- the windows of one image, and a split's images prepared for training and testing ----

class ImageWindows:
    """One training or test image: its id, size, non-difficult ground truth (boxes,
    classes), proposals, and windows = ground truth followed by proposals.

    The overlap of every window with the ground truth of each class (``overlap``, (R, K))
    and the box it overlaps most (``match``) are computed when asked, not kept: at K = 20
    classes they would be 640 KB an image, 3 GB for VOC 2007 trainval, while the windows
    alone are 64 KB (docs/design.md, "Memory")."""

    def __init__(self, image_id, hw, gt_boxes, gt_classes, proposals, num_classes):
        self.id, self.hw, self.num_classes = image_id, tuple(hw), int(num_classes)
        self.gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        self.gt_classes = np.asarray(gt_classes, dtype=np.int64)
        self.windows = np.concatenate(
            [self.gt_boxes, np.asarray(proposals, dtype=np.float64).reshape(-1, 4)])

    @property
    def proposals(self):
        return self.windows[len(self.gt_boxes):]

    @property
    def is_gt(self):
        return np.arange(len(self.windows)) < len(self.gt_boxes)

    def overlaps(self):
        """(overlap (R, K) IoU with the best-overlapping ground-truth box of each class (0
        where the class has none), match (R, K) that box's index into gt_boxes or -1)."""
        R, K = len(self.windows), self.num_classes
        overlap = np.zeros((R, K))
        match = np.full((R, K), -1, dtype=np.int64)
        if len(self.gt_boxes):
            ov = iou(self.windows, self.gt_boxes)
            for c in range(K):
                cols = np.flatnonzero(self.gt_classes == c)
                if cols.size:
                    best = ov[:, cols].argmax(axis=1)
                    overlap[:, c] = ov[np.arange(R), cols[best]]
                    match[:, c] = cols[best]
        return overlap, match

    def class_overlap(self, c):
        """(R,) IoU of every window with the best-overlapping ground-truth box of class c."""
        cols = np.flatnonzero(self.gt_classes == c)
        if cols.size == 0:
            return np.zeros(len(self.windows))
        return iou(self.windows, self.gt_boxes[cols]).max(axis=1)

    @property
    def overlap(self):
        return self.overlaps()[0]

    @property
    def match(self):
        return self.overlaps()[1]

    def max_overlap(self):
        """(R,) best IoU with any ground truth box, and (R,) its class."""
        overlap = self.overlap
        if overlap.shape[1] == 0:
            return np.zeros(len(self.windows)), np.zeros(len(self.windows), dtype=np.int64)
        return overlap.max(axis=1), overlap.argmax(axis=1)


def image_windows(ds, i, proposals, num_classes, keep_difficult=False):
    boxes, cls, diff = ds.object_boxes(i)
    keep = np.ones(len(boxes), bool) if keep_difficult else ~diff
    ann = ds.annotation(i)
    return ImageWindows(ds.ids[i], (ann["height"], ann["width"]), boxes[keep], cls[keep],
                        proposals, num_classes)


def prepare_images(ds, workdir, det, progress=True, limit=None, precomputed=None):
    """Proposals and conv5 maps for every image of a split (both cached under workdir);
    returns ([ImageWindows], ConvCache)."""
    props = ProposalCache(os.path.join(workdir, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"], precomputed=precomputed)
    conv = scale_caches(workdir, det.model, det.config["scales"], det.mean, det.pixel_scale)
    n = len(ds) if limit is None else min(limit, len(ds))
    if distributed.world().size > 1:
        share_caches(ds, workdir, det, n, precomputed, distributed.world())
    with tqdm(total=n, desc=f"proposals ({ds.split})", unit="img", disable=not progress) as bar:
        props.fill(ds.ids[:n], [ds.image_path(i) for i in range(n)], progress=bar.update)
    images = []
    for i in tqdm(range(n), desc=f"conv5 ({ds.split})", unit="img", disable=not progress):
        load = (lambda i=i: ds.load(i)[0])
        p = props.get(ds.ids[i], load)
        images.append(image_windows(ds, i, p, len(det.classes)))
        if not conv.has(ds.ids[i]):
            conv.get(ds.ids[i], load)
    return images, conv


def share_caches(ds, workdir, det, n, precomputed, comm):
    """Under MPI (`mpiexec -n R minispp detect-train`): this rank's images, every R-th of the
    first n, into the proposal cache and the conv5 caches at the fine-tuning scales and every
    SVM scale; returns when every rank is done, so rank 0 then finds every image cached.
    The caches are per image, so a killed run keeps what it wrote."""
    mine = distributed.shard(list(range(n)), comm)
    props = ProposalCache(os.path.join(workdir, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"], precomputed=precomputed)
    props.fill([ds.ids[i] for i in mine], [ds.image_path(i) for i in mine],
               jobs=max(1, (os.cpu_count() or 1) // comm.local_size))
    sets = [det.config["scales"]] + list(det.config.get("svm_scales") or ())
    conv = scale_caches(workdir, det.model, sorted({int(s) for ss in sets for s in ss}),
                        det.mean, det.pixel_scale)
    for i in mine:
        if not conv.has(ds.ids[i]):
            conv.get(ds.ids[i], lambda i=i: ds.load(i)[0])
    comm.barrier()


def pooled_windows(det, conv, image, rows):
    """Pooled conv5 features (len(rows), D) of some of an image's windows (maps from the cache)."""
    maps, hw = conv.get(image.id, lambda: None)
    return det.pooler(maps, image.windows[rows], hw)


def split_proposals(voc, split, out, top=2000, seed=0, limit=None, jobs=None, precomputed=None,
                    progress=True):
    """`minispp proposals`: selective search (or a precomputed file) for the first `limit`
    images of a VOC split, cached in out/proposals/, and their recall of the non-difficult
    objects. Returns {"images", "boxes_per_image", "objects", "recall": {0.5: r, 0.7: r}}."""
    from minispp.data.voc import VOCDataset
    from minispp.detection.proposals import recall
    for name, value in (("--top", top), ("--limit", limit), ("--jobs", jobs)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    ds = VOCDataset(voc, split)
    cache = ProposalCache(os.path.join(out, "proposals"), seed=seed, top=top, precomputed=precomputed)
    n = len(ds) if limit is None else min(limit, len(ds))
    comm = distributed.world()
    if comm.size > 1:               # every R-th image on each rank; rank 0 reports the recall
        mine = distributed.shard(list(range(n)), comm)
        cache.fill([ds.ids[i] for i in mine], [ds.image_path(i) for i in mine],
                   jobs or max(1, (os.cpu_count() or 1) // comm.local_size))
        comm.barrier()
        if not comm.is_root:
            return None
    with tqdm(total=n, desc="proposals", unit="img", disable=not progress) as bar:
        cache.fill(ds.ids[:n], [ds.image_path(i) for i in range(n)], jobs, bar.update)
    props, gts = [], []
    for i in range(n):
        props.append(cache.get(ds.ids[i], lambda i=i: ds.load(i)[0]))
        boxes, _, diff = ds.object_boxes(i)
        gts.append(boxes[~diff])
    return {"images": n, "boxes_per_image": float(np.mean([len(p) for p in props])) if props else 0.0,
            "objects": int(sum(len(g) for g in gts)), "recall": recall(props, gts)}
