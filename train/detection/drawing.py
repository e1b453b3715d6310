"""Pictures of the detector: detections on an image, and the projection audit (a window
on the image with the conv5 cells it pools from, and where those cells look)."""
import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]


def class_colour(c):
    return PALETTE[c % len(PALETTE)]


def shown_detections(detections, threshold=0.0, top=0):
    """[(class, box, score)] to draw: every detection scoring above threshold, and the top
    highest-scoring ones of the image whatever their score, best first."""
    every = sorted(((c, b, float(s)) for c, (boxes, scores) in detections.items()
                    for b, s in zip(boxes, scores)), key=lambda t: -t[2])
    return [t for k, t in enumerate(every) if t[2] > threshold or k < top]


def draw_detections(img, detections, classes, threshold=0.0, width=3, top=0):
    """A PIL image: img (uint8 RGB) with the detections of shown_detections (threshold, top)
    boxed in their class's colour and labelled 'class score'. detections: {class index:
    (boxes, scores)}."""
    out = Image.fromarray(np.asarray(img)).convert("RGB")
    d = ImageDraw.Draw(out)
    for c, b, s in reversed(shown_detections(detections, threshold, top)):   # best drawn last, on top
        x1, y1, x2, y2 = (float(v) for v in b)
        d.rectangle([x1, y1, x2, y2], outline=class_colour(c), width=width)
        label = f"{classes[c]} {s:.2f}"
        tw = d.textlength(label)
        d.rectangle([x1, max(0, y1 - 12), x1 + tw + 4, max(0, y1 - 12) + 12], fill=class_colour(c))
        d.text((x1 + 2, max(0, y1 - 12)), label, fill=(0, 0, 0))
    return out


def draw_projection(img, box, cells, stride, offset, receptive, scale=1.0):
    """The projection audit: img (the image at the scale the window was pooled from, uint8
    RGB), the window box (pixels of that image, red), the centre of every conv5 cell (grey
    dots), the window's projected cells (green dots, their block outlined) and the
    receptive fields of its corner cells (thin blue squares)."""
    out = Image.fromarray(np.asarray(img)).convert("RGB")
    d = ImageDraw.Draw(out)
    H, W = np.asarray(img).shape[:2]
    x1c, y1c, x2c, y2c = (int(v) for v in cells)
    for cy in range(0, int((H - 1 - offset) // stride) + 1):
        for cx in range(0, int((W - 1 - offset) // stride) + 1):
            px, py = offset + stride * cx, offset + stride * cy
            inside = x1c <= cx <= x2c and y1c <= cy <= y2c
            r = 2 if inside else 1
            d.ellipse([px - r, py - r, px + r, py + r], fill=(0, 220, 0) if inside else (160, 160, 160))
    d.rectangle([offset + stride * x1c, offset + stride * y1c, offset + stride * x2c,
                 offset + stride * y2c], outline=(0, 220, 0), width=1)
    half = (receptive - 1) / 2
    for cx, cy in ((x1c, y1c), (x2c, y2c)):
        px, py = offset + stride * cx, offset + stride * cy
        d.rectangle([px - half, py - half, px + half, py + half], outline=(40, 90, 255), width=1)
    d.rectangle([float(v) for v in box], outline=(255, 0, 0), width=2)
    return out


def best_window_projection(det, img, boxes, scores, maps, scales):
    """The projection audit of an image's best-scoring window: the scale it is pooled at
    (the one whose scaled window is closest to 224 x 224), its conv5 cells and the picture
    (draw_projection). Returns (scale, cells, PIL image)."""
    from minispp.data.transforms import resize_min_side
    from minispp.geometry import window_to_feature_map

    from train.detection.windows import choose_scales, scale_factors
    S, offset, receptive = det.model.feature_geometry()
    _, r = np.unravel_index(np.argmax(scores), scores.shape)
    box = boxes[r]
    k = int(choose_scales(box[None], img.shape[:2], scales)[0])
    f = scale_factors(img.shape[:2], scales)[k]
    cells = window_to_feature_map(box[None] * f, S, maps[scales[k]].shape[2:], offset)[0]
    picture = draw_projection(resize_min_side(img, scales[k]), box * f, cells, S, offset, receptive)
    return scales[k], cells, picture


def unique_stems(paths):
    """A picture name for each input: its base name without extension, with -2, -3, ...
    added when an earlier input has it (a/x.jpg, b/x.jpg), compared case-insensitively, so
    no picture overwrites another on any file system."""
    import os
    used, stems = set(), []
    for path in paths:
        base = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "image"
        stem, n = base, 1
        while stem.casefold() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems
