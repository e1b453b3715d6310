"""The paper's Table 10 on this machine: the SPP-net way against the R-CNN way, same model,
same images, same windows, same process.

R-CNN way: every window is cropped with 16 pixels of context (the box is enlarged so that,
warped to 224 x 224, it has 16 pixels of image around it; what falls outside the image is
the mean, zero after mean subtraction), warped to 224 x 224 and run through the whole net:
conv1-conv5, the pooling layer, fc6, fc7. All of an image's windows are run (in batches),
nothing is extrapolated.
SPP-net way: conv1-conv5 once per image and scale (1 scale: 688; 5 scales), every window
projected and pooled with the pyramid from the map of its scale, fc6 and fc7 on the pooled
features.
"""
import os
import time

import numpy as np
from PIL import Image

from minispp.data.transforms import min_side_shape, to_input, warp_mean
from train.detection.windows import FIVE_SCALES, SINGLE_SCALE, conv5_maps

CROP, CONTEXT = 224, 16


def rcnn_crop(img, box, mean, pixel_scale, size=CROP, context=CONTEXT):
    """One window the R-CNN way: (3, size, size) float32 input. mean: a scalar, or the mean
    image (warped here to size x size unless it already is)."""
    H, W = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2 + 1) / 2, (y1 + y2 + 1) / 2
    grow = size / (size - 2.0 * context)
    hw, hh = (x2 - x1 + 1) / 2 * grow, (y2 - y1 + 1) / 2 * grow
    ex1, ey1, ex2, ey2 = cx - hw, cy - hh, cx + hw, cy + hh          # enlarged, continuous
    fx, fy = size / (ex2 - ex1), size / (ey2 - ey1)
    cx1, cy1 = max(0, int(np.floor(ex1))), max(0, int(np.floor(ey1)))
    cx2, cy2 = min(W, int(np.ceil(ex2))), min(H, int(np.ceil(ey2)))
    ox1 = min(size - 1, max(0, int(round((cx1 - ex1) * fx))))
    oy1 = min(size - 1, max(0, int(round((cy1 - ey1) * fy))))
    ow = max(1, min(size - ox1, int(round((cx2 - cx1) * fx))))
    oh = max(1, min(size - oy1, int(round((cy2 - cy1) * fy))))
    patch = np.asarray(Image.fromarray(img[cy1:cy2, cx1:cx2]).resize((ow, oh), Image.BILINEAR))
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, oy1:oy1 + oh, ox1:ox1 + ow] = to_input(patch, _mean_patch(mean, size, oy1, ox1, oh, ow),
                                                  pixel_scale)
    return out


def _mean_patch(mean, size, y, x, h, w):
    if np.ndim(mean) == 0:
        return mean
    return np.ascontiguousarray(warped_mean(mean, size)[:, y:y + h, x:x + w])


def warped_mean(mean, size=CROP):
    """The mean image at size x size (itself if it already is, or a scalar)."""
    if np.ndim(mean) == 0 or mean.shape[1:] == (size, size):
        return mean
    return warp_mean(mean, size, size)


def _head_macs(det):
    """Multiply-adds of fc6 and fc7 for one window."""
    net = det.head(256)
    return sum(layer.macs() for layer in net.layers[:net.index(det.feature_layer) + 1])


def time_rcnn(det, img, boxes, batch=32):
    """{crop, conv, pool, fc, total} seconds for all windows of one image, the R-CNN way."""
    model = det.model
    t = {"crop": 0.0, "conv": 0.0, "pool": 0.0, "fc": 0.0}
    net = model.instance(batch, (CROP, CROP))
    last_conv, pool = model.specs[model.trunk_length - 1].name, model.specs[model.trunk_length].name
    pooled = []
    mean = warped_mean(det.mean)                    # once, not once per window
    for a in range(0, len(boxes), batch):
        t0 = time.perf_counter()
        x = np.stack([rcnn_crop(img, b, mean, det.pixel_scale) for b in boxes[a:a + batch]])
        t1 = time.perf_counter()
        x = net.forward(x, until=last_conv)
        t2 = time.perf_counter()
        pooled.append(net.forward(x, start=pool, until=pool).reshape(len(x), -1).copy())
        t3 = time.perf_counter()
        t["crop"] += t1 - t0
        t["conv"] += t2 - t1
        t["pool"] += t3 - t2
    t0 = time.perf_counter()
    det.fc7(np.concatenate(pooled))                 # in the same batches as SPP-net's
    t["fc"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return t


def time_spp(det, img, boxes, scales, distinct=True):
    """{conv, pool, fc, total, windows_fc} seconds for one image, the SPP-net way. distinct:
    pool and run fc6/fc7 once per distinct projected window (WindowPooler.unique) and copy the
    rows back to every window; False runs every window."""
    t0 = time.perf_counter()
    maps = conv5_maps(det.model, img, scales, det.mean, det.pixel_scale)
    t1 = time.perf_counter()
    if distinct:
        pooled, inverse = det.pooler.unique(maps, boxes, img.shape[:2])
    else:
        pooled = det.pooler(maps, boxes, img.shape[:2])
    t2 = time.perf_counter()
    h = det.fc7(pooled)
    if distinct:
        h = h[inverse]
    t3 = time.perf_counter()
    t = {"conv": t1 - t0, "pool": t2 - t1, "fc": t3 - t2}
    t["total"] = sum(t.values())
    t["windows_fc"] = len(pooled)
    return t


def _macs(layers):
    return sum(layer.macs() for layer in layers)


def macs_spp(det, image_hw, scales, windows_fc):
    """Multiply-adds for one image the SPP-net way: the conv trunk once per scale, fc6 and
    fc7 once per window that goes through them."""
    conv = sum(_macs(det.model.trunk(min_side_shape(*image_hw, s)).layers) for s in scales)
    return conv + windows_fc * _head_macs(det)


def macs_rcnn(det, windows):
    """Multiply-adds for one image the R-CNN way: the whole net on every 224 x 224 window."""
    trunk = det.model.trunk((CROP, CROP)).layers
    return windows * (_macs(trunk) + _head_macs(det))


def warm_up(det, img, boxes):
    """Compile/load every kernel and allocate once, so the timed runs measure steady state."""
    time_spp(det, img, boxes[:50], SINGLE_SCALE)
    time_rcnn(det, img, boxes[:32])


SPP_WAYS = (("SPP 1-scale", SINGLE_SCALE, True),                  # (name, scales, distinct)
            ("SPP 1-scale, every window", SINGLE_SCALE, False),
            ("SPP 5-scale", FIVE_SCALES, True))
WAYS = tuple(name for name, _, _ in SPP_WAYS) + ("R-CNN",)
PARTS = ("crop", "conv", "pool", "fc", "total", "windows_fc", "gmacs")


def time_table(det, images, progress=print):
    """images: [(id, uint8 image, boxes)]. Returns ({way: {part: mean seconds}}, markdown).
    Ways: SPP-net at 1 scale (fc once per distinct projected window, as the detector runs),
    the same with fc on every window, SPP-net at 5 scales, and the R-CNN way."""
    warm_up(det, images[0][1], images[0][2])
    runs = {w: [] for w in WAYS}
    for image_id, img, boxes in images:
        # every image has its own shapes: build (and allocate) the conv nets for them first,
        # untimed, as the R-CNN way's 224 x 224 net was built in warm_up
        conv5_maps(det.model, img, FIVE_SCALES, det.mean, det.pixel_scale)
        for name, scales, distinct in SPP_WAYS:
            t = time_spp(det, img, boxes, scales, distinct)
            t["gmacs"] = macs_spp(det, img.shape[:2], scales, t["windows_fc"]) / 1e9
            runs[name].append(t)
        t = time_rcnn(det, img, boxes)
        t["windows_fc"], t["gmacs"] = len(boxes), macs_rcnn(det, len(boxes)) / 1e9
        runs["R-CNN"].append(t)
        progress(f"{image_id}: {len(boxes)} windows; R-CNN {runs['R-CNN'][-1]['total']:.1f} s, "
                 f"SPP 1-scale {runs['SPP 1-scale'][-1]['total']:.2f} s "
                 f"({runs['SPP 1-scale, every window'][-1]['total']:.2f} s with fc on every window), "
                 f"5-scale {runs['SPP 5-scale'][-1]['total']:.2f} s")
    mean = {w: {k: float(np.mean([r.get(k, 0.0) for r in rs])) for k in PARTS}
            for w, rs in runs.items()}
    return mean, markdown(mean, len(images), int(np.mean([len(b) for _, _, b in images])))


def _times(x):
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def markdown(mean, n_images, n_windows):
    r = mean["R-CNN"]
    ways = [w for w in WAYS if w in mean]
    lines = [f"Seconds per image (mean of {n_images} images, {n_windows} windows each on average), "
             f"same model and windows, this machine's CPU:", "",
             "| | " + " | ".join(ways) + " |", "|---" * (len(ways) + 1) + "|"]
    for key, label in (("conv", "conv1-5"), ("crop", "crop + warp (R-CNN only)"),
                       ("pool", "pooling (SPP / pool5)"), ("fc", "fc6, fc7"), ("total", "total")):
        lines.append(f"| {label} | " + " | ".join(f"{mean[w][key]:.3f}" for w in ways) + " |")
    lines.append("| windows through fc6, fc7 | " + " | ".join(f"{mean[w]['windows_fc']:.0f}" for w in ways) + " |")
    lines.append("| multiply-adds, conv + fc (G) | " + " | ".join(f"{mean[w]['gmacs']:.4g}" for w in ways) + " |")

    def through_pool5(m):
        return m["crop"] + m["conv"] + m["pool"]
    rows = (("speed-up, conv", lambda m: m["conv"]),
            ("speed-up, features through pool5", through_pool5),
            ("speed-up, features through fc7", lambda m: m["total"]),
            ("ratio of multiply-adds (the speed-up at equal efficiency)", lambda m: m["gmacs"]))
    for label, part in rows:
        lines.append(f"| {label} | " + " | ".join(_times(part(r) / part(mean[w])) for w in ways) + " |")
    return "\n".join(lines) + "\n"


def time_split(det, voc, split, count, workdir):
    """`minispp detect-time`: the first `count` images of a VOC split with their cached
    proposals (computed when missing), timed by time_table. Returns its (runs, markdown)."""
    from minispp.data.voc import VOCDataset
    from minispp.detection.proposals import ProposalCache
    if count < 1:
        raise ValueError(f"--images must be at least 1, got {count}")
    ds = VOCDataset(voc, split)
    props = ProposalCache(os.path.join(workdir, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"])
    images = []
    for i in range(min(count, len(ds))):
        img = ds.load(i)[0]
        images.append((ds.ids[i], img, props.get(ds.ids[i], lambda img=img: img)))
    return time_table(det, images)
