"""Selective search, "fast" mode (Uijlings et al., IJCV 2013), the proposals SPP-net's
detector uses (paper Sec. 4.1): about 2,000 boxes per VOC-size image.

1. Segment the image with Felzenszwalb and Huttenlocher's graph method (scikit-image's
   ``felzenszwalb``, sigma 0.8, min_size = k) in two colour spaces (HSV and Lab) at
   k = 50 and 100.
2. Group hierarchically: start from the segments, repeatedly merge the two adjacent regions
   that are most similar, until one region is left; every region ever formed is a
   proposal (its bounding box). Similarities, each in [0, 1]:
     colour   sum of min(h_i, h_j) over 25-bin histograms of each channel (L1-normalized)
     texture  the same over 10-bin histograms of Gaussian derivatives (sigma 1) in 8
              orientations per channel (240 bins)
     size     1 - (size_i + size_j) / size(image): small regions merge first
     fill     1 - (size of the pair's bounding box - size_i - size_j) / size(image)
   The fast mode runs two combinations, colour+texture+size+fill and texture+size+fill:
   2 colour spaces x 2 k x 2 = 8 strategies.
3. Rank: in each strategy, the region made last (the whole image) has position 1, the one
   before it 2, and so on; each region's position is multiplied by a random number in
   [0, 1) (seeded: the same image and seed give the same boxes), the union is sorted by
   that value, duplicate boxes are dropped (keeping the best), and the first ``top`` kept.

Boxes are (x1, y1, x2, y2), 0-based inclusive pixels, as everywhere in minispp.
"""
import heapq

import numpy as np
from scipy import ndimage

COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8
STRATEGIES = tuple((space, k, sims) for space in ("hsv", "lab") for k in (50, 100)
                   for sims in ("CTSF", "TSF"))


def colour_space(img, space):
    """uint8 RGB (H, W, 3) -> float (H, W, 3) in [0, 1] per channel in HSV or Lab."""
    from skimage import color
    rgb = np.asarray(img, dtype=np.float64) / 255.0
    if space == "hsv":
        return color.rgb2hsv(rgb)
    if space == "lab":
        lab = color.rgb2lab(rgb)
        return np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255.0,
                         (lab[..., 2] + 128) / 255.0], axis=-1).clip(0, 1)
    if space == "rgb":
        return rgb
    raise ValueError(f"unknown colour space {space!r}; expected hsv, lab or rgb")


def _histograms(labels, n, values, bins):
    """(n, C * bins) L1-normalized per-region histograms of values (H, W, C) in [0, 1]."""
    C = values.shape[2]
    b = np.minimum((values * bins).astype(np.int64), bins - 1)
    idx = (labels[..., None] * (C * bins) + np.arange(C) * bins + b).ravel()
    h = np.bincount(idx, minlength=n * C * bins).reshape(n, C * bins).astype(np.float64)
    return h / h.sum(axis=1, keepdims=True)


def _texture_values(img):
    """(H, W, 3 * 8) rectified Gaussian-derivative responses in 8 orientations, each scaled
    to [0, 1] by its maximum over the image."""
    out = []
    for c in range(img.shape[2]):
        gy = ndimage.gaussian_filter(img[..., c], 1.0, order=(1, 0))
        gx = ndimage.gaussian_filter(img[..., c], 1.0, order=(0, 1))
        for o in range(ORIENTATIONS):
            theta = 2 * np.pi * o / ORIENTATIONS
            r = np.maximum(np.cos(theta) * gx + np.sin(theta) * gy, 0)
            m = r.max()
            out.append(r / m if m > 0 else r)
    return np.stack(out, axis=-1)


def _adjacent_pairs(labels):
    """Unique (i, j), i < j, of regions that touch horizontally or vertically."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    diff = a != b
    lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
    keys = np.unique(lo.astype(np.int64) * (labels.max() + 1) + hi)
    return np.stack([keys // (labels.max() + 1), keys % (labels.max() + 1)], axis=1)


def initial_regions(img, space, k):
    """Felzenszwalb segments of img in a colour space: (labels (H, W), sizes, boxes,
    colour histograms, texture histograms, adjacent pairs)."""
    from skimage.segmentation import felzenszwalb
    cs = colour_space(img, space)
    labels = felzenszwalb(cs, scale=k, sigma=0.8, min_size=k, channel_axis=-1)
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    n = int(labels.max()) + 1
    sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    boxes = np.zeros((n, 4))
    for r, sl in enumerate(ndimage.find_objects(labels + 1)):
        boxes[r] = (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)
    colour = _histograms(labels, n, cs, COLOUR_BINS)
    texture = _histograms(labels, n, _texture_values(cs), TEXTURE_BINS)
    return labels, sizes, boxes, colour, texture, _adjacent_pairs(labels)


def group(sizes, boxes, colour, texture, pairs, image_size, sims="CTSF"):
    """Hierarchical grouping. Returns the boxes of every region in the order they were
    made (the initial ones first, the whole image last): (2n - 1 or fewer, 4)."""
    n = len(sizes)
    cap = 2 * n
    size = np.zeros(cap)
    box = np.zeros((cap, 4))
    col = np.zeros((cap, colour.shape[1]))
    tex = np.zeros((cap, texture.shape[1]))
    size[:n], box[:n], col[:n], tex[:n] = sizes, boxes, colour, texture
    use_c, use_t, use_s, use_f = ("C" in sims), ("T" in sims), ("S" in sims), ("F" in sims)

    def similarity(i, j):
        s = 0.0
        if use_c:
            s += np.minimum(col[i], col[j]).sum()
        if use_t:
            s += np.minimum(tex[i], tex[j]).sum()
        if use_s:
            s += 1.0 - (size[i] + size[j]) / image_size
        if use_f:
            bw = max(box[i, 2], box[j, 2]) - min(box[i, 0], box[j, 0]) + 1
            bh = max(box[i, 3], box[j, 3]) - min(box[i, 1], box[j, 1]) + 1
            s += 1.0 - (bw * bh - size[i] - size[j]) / image_size
        return s

    neighbours = [set() for _ in range(cap)]
    heap = []
    for i, j in pairs:
        i, j = int(i), int(j)
        neighbours[i].add(j)
        neighbours[j].add(i)
        heap.append((-similarity(i, j), i, j))
    heapq.heapify(heap)
    alive = np.zeros(cap, dtype=bool)
    alive[:n] = True
    t = n
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        size[t] = size[i] + size[j]
        box[t] = (min(box[i, 0], box[j, 0]), min(box[i, 1], box[j, 1]),
                  max(box[i, 2], box[j, 2]), max(box[i, 3], box[j, 3]))
        col[t] = (size[i] * col[i] + size[j] * col[j]) / size[t]
        tex[t] = (size[i] * tex[i] + size[j] * tex[j]) / size[t]
        alive[i] = alive[j] = False
        alive[t] = True
        for m in (neighbours[i] | neighbours[j]) - {i, j}:
            neighbours[m].discard(i)
            neighbours[m].discard(j)
            neighbours[m].add(t)
            neighbours[t].add(m)
            heapq.heappush(heap, (-similarity(t, m), m, t))
        t += 1
    return box[:t].copy()


def selective_search(img, seed=0, top=2000, strategies=STRATEGIES, min_side=8):
    """Proposal boxes (N <= top, 4) for uint8 RGB img (H, W, 3), best-ranked first.
    Deterministic for (img, seed). Boxes with a side under min_side pixels are dropped."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"selective search needs an RGB image (H, W, 3), got shape {img.shape}")
    rng = np.random.default_rng(seed)
    H, W = img.shape[:2]
    everything, values = [], []
    segments = {}
    for space, k, sims in strategies:
        if (space, k) not in segments:
            segments[space, k] = initial_regions(img, space, k)
        _, sizes, boxes, colour, texture, pairs = segments[space, k]
        made = group(sizes, boxes, colour, texture, pairs, float(H * W), sims)
        position = np.arange(len(made), 0, -1, dtype=np.float64)     # last made: 1
        everything.append(made)
        values.append(position * rng.random(len(made)))
    boxes = np.concatenate(everything)
    order = np.argsort(np.concatenate(values), kind="stable")
    boxes = boxes[order]
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_side) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_side)
    boxes = boxes[keep]
    _, first = np.unique(boxes, axis=0, return_index=True)        # duplicates: keep the best
    return boxes[np.sort(first)][:top]
