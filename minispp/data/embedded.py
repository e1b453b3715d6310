"""The embedded default data set: real photographs shipped by registry packages
(scikit-image's ``skimage.data`` and scikit-learn's sample images), composed into a
classification task that needs a CNN, generated deterministically from a seed on first use
and written to disk in the ImageNet class-folder layout, so it is read back through the same
reader as real data.

Each image: a cluttered background (a random crop of one of several texture photographs,
colour-cast, with smaller patches of other textures pasted over it), and one object, a
region cut from one of ten photographs (the class), pasted at a random scale (30-75% of the
shorter side), aspect jitter, position and flip, with a colour cast and brightness/contrast
jitter, under a soft-edged mask (the horse's own silhouette and the logo's alpha where the
photo has one). Image sizes are drawn independently per side from 200-360 pixels.

``compose`` returns the object boxes as well (x1, y1, x2, y2, 0-based inclusive pixels),
and can place several objects: the detection variant in the VOC layout builds on it.
"""
import json
import os
import shutil

import numpy as np
from PIL import Image

CLASSES = ("astronaut", "cat", "coffee", "rocket", "motorcycle", "horse", "cameraman",
           "temple", "flower", "logo")
GENERATOR_VERSION = 1


def _sources():
    """{class: (rgb uint8 (h, w, 3), mask float32 (h, w) in [0, 1] or None)}, and a list of
    background textures (rgb uint8)."""
    import skimage.data as d
    from sklearn.datasets import load_sample_images
    china, flower = load_sample_images().images

    def rgb(a):
        return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]

    horse = d.horse()                      # bool silhouette: True is background
    logo = d.logo()
    objects = {
        "astronaut": (d.astronaut()[20:300, 130:370], None),
        "cat": (d.chelsea()[10:290, 100:340], None),
        "coffee": (d.coffee()[30:330, 160:460], None),
        "rocket": (d.rocket()[0:420, 230:430], None),
        "motorcycle": (d.stereo_motorcycle()[0][120:470, 90:690], None),
        "horse": (np.zeros(horse.shape + (3,), np.uint8) + np.array([120, 80, 40], np.uint8),
                  (~horse).astype(np.float32)),
        "cameraman": (rgb(d.camera()[30:430, 90:390]), None),
        "temple": (china[0:290, 90:420], None),
        "flower": (flower[40:400, 170:560], None),
        "logo": (logo[..., :3], logo[..., 3].astype(np.float32) / 255),
    }
    backgrounds = [rgb(d.brick()), rgb(d.grass()), rgb(d.gravel()), rgb(d.text()),
                   rgb(d.page()), rgb(d.moon()), rgb(d.coins()), d.hubble_deep_field()[..., :3],
                   d.retina()[200:1200, 200:1200]]
    return {c: objects[c] for c in CLASSES}, backgrounds


def _soft_ellipse(h, w):
    """An elliptical mask with a feathered edge: photo crops lose their rectangle."""
    y, x = np.mgrid[0:h, 0:w]
    r = ((x + 0.5) / w * 2 - 1) ** 2 + ((y + 0.5) / h * 2 - 1) ** 2
    return np.clip((1.0 - r) / 0.15, 0, 1).astype(np.float32)


def _resize(a, w, h, resample=Image.BILINEAR):
    if a.dtype == np.float32:
        return np.asarray(Image.fromarray(a, mode="F").resize((w, h), resample))
    return np.asarray(Image.fromarray(a).resize((w, h), resample))


def _random_crop(rng, img, h, w):
    """A crop of img at a random scale and position, resized to (h, w)."""
    H, W = img.shape[:2]
    s = rng.uniform(0.4, 1.0)
    ch = max(8, int(min(H, W * h / w) * s))
    cw = max(8, int(ch * w / h))
    cw = min(cw, W)
    ch = min(ch, H)
    y = rng.integers(0, H - ch + 1)
    x = rng.integers(0, W - cw + 1)
    return _resize(np.ascontiguousarray(img[y:y + ch, x:x + cw]), w, h)


def _cast(rng, img, strength):
    """Colour cast and brightness/contrast jitter, float32 in [0, 255]."""
    f = img.astype(np.float32)
    gains = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
    mean = f.mean()
    contrast = rng.uniform(0.7, 1.3)
    f = (f - mean) * contrast + mean * rng.uniform(0.75, 1.25)
    return np.clip(f * gains, 0, 255)


def background(rng, backgrounds, h, w):
    canvas = _cast(rng, _random_crop(rng, backgrounds[rng.integers(len(backgrounds))], h, w), 0.5)
    for _ in range(rng.integers(2, 6)):                 # clutter: patches of other textures
        ph, pw = rng.integers(h // 8, h // 3), rng.integers(w // 8, w // 3)
        patch = _cast(rng, _random_crop(rng, backgrounds[rng.integers(len(backgrounds))], ph, pw), 0.5)
        y, x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        canvas[y:y + ph, x:x + pw] = patch
    return canvas


def paste(rng, canvas, obj, mask, scale=(0.30, 0.75), owner=None, index=0):
    """Paste one object at a random scale (a fraction of the canvas's shorter side) and
    position; return its box (x1, y1, x2, y2). owner: an int (h, w) map whose pixels under
    the object are set to index (what is visible of whom, for occlusion)."""
    h, w = canvas.shape[:2]
    oh, ow = obj.shape[:2]
    side = rng.uniform(*scale) * min(h, w)
    aspect = rng.uniform(0.85, 1.15) * ow / oh
    th = int(max(12, min(h, side / max(1.0, aspect) if aspect >= 1 else side)))
    tw = int(max(12, min(w, th * aspect)))
    th = int(max(12, min(h, tw / aspect)))
    img = _resize(np.ascontiguousarray(obj), tw, th)
    m = _soft_ellipse(th, tw) if mask is None else _resize(mask, tw, th)
    if rng.random() < 0.5:
        img, m = img[:, ::-1], m[:, ::-1]
    img = _cast(rng, img, 0.25)
    y, x = rng.integers(0, h - th + 1), rng.integers(0, w - tw + 1)
    region = canvas[y:y + th, x:x + tw]
    region[...] = region * (1 - m[..., None]) + img * m[..., None]
    if owner is not None:
        owner[y:y + th, x:x + tw][m > 0.5] = index
    ys, xs = np.nonzero(m > 0.5)
    return (int(x + xs.min()), int(y + ys.min()), int(x + xs.max()), int(y + ys.max()))


def compose(rng, sources, backgrounds, labels, size):
    """An image (uint8 (h, w, 3)) with one object per label; returns (image, boxes)."""
    h, w = size
    canvas = background(rng, backgrounds, h, w)
    boxes = [paste(rng, canvas, *sources[CLASSES[c]]) for c in labels]
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), boxes


PARTIAL_MARKER = ".minispp-embedded-partial"


def _generate_once(root, stamp, write):
    """Run write(tmp_folder) and rename tmp_folder to root, unless root already holds a data
    set with this stamp. An interrupted generation is redone, never half-used; a folder made
    with other arguments, or one that is not ours, is refused.

    tmp_folder is root + '.partial', marked as ours by a PARTIAL_MARKER file written as soon
    as it is made. An existing root.partial is deleted only when it carries that marker (an
    interrupted generation of ours); an empty one is reused; any other is refused, naming it:
    nothing this program did not make is ever deleted."""
    root = os.fspath(root)
    stamp_path = os.path.join(root, "embedded.json")
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"{root} exists and is not a folder; choose another --out")
    if os.path.exists(stamp_path):
        try:
            with open(stamp_path) as f:
                found = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{stamp_path} cannot be read ({err}); remove {root} or choose "
                             f"another folder") from None
        if found == stamp:
            return root
        raise ValueError(f"{root} holds an embedded data set made with other arguments "
                         f"({stamp_path}); remove it or choose another folder")
    if os.path.exists(root) and os.listdir(root):
        raise ValueError(f"{root} exists and is not an embedded data set; choose another folder")
    tmp = os.path.normpath(root) + ".partial"
    marker = os.path.join(tmp, PARTIAL_MARKER)
    if os.path.islink(tmp) or (os.path.exists(tmp) and not os.path.isdir(tmp)):
        raise ValueError(f"{tmp} exists and is not a folder of an interrupted generation; "
                         f"remove it or choose another --out")
    if os.path.isdir(tmp) and os.listdir(tmp):
        if not os.path.isfile(marker):
            raise ValueError(f"{tmp} exists and was not made by `minispp embedded` (no "
                             f"{PARTIAL_MARKER} in it): it is left alone; remove it yourself "
                             f"or choose another --out")
        shutil.rmtree(tmp)                 # an interrupted generation of ours: redo it
    try:
        os.makedirs(tmp, exist_ok=True)
        with open(marker, "w") as f:
            json.dump(stamp, f)
    except OSError as err:
        raise ValueError(f"cannot write the data set next to {root}: {err}") from None
    write(tmp)
    with open(os.path.join(tmp, "embedded.json"), "w") as f:
        json.dump(stamp, f, indent=1)
    os.remove(marker)
    if os.path.exists(root):
        os.rmdir(root)                     # empty (checked above): the data set takes its place
    os.replace(tmp, root)
    return root


def make_classification(root, seed=0, train_per_class=120, val_per_class=30):
    """Write the classification variant to root/{train,val}/<class>/*.jpg (if not already
    there with the same arguments). Returns root."""
    stamp = {"generator": GENERATOR_VERSION, "seed": seed, "train_per_class": train_per_class,
             "val_per_class": val_per_class, "classes": list(CLASSES)}

    def write(tmp):
        sources, backgrounds = _sources()
        for split, count, offset in (("train", train_per_class, 0), ("val", val_per_class, 1)):
            for c, name in enumerate(CLASSES):
                folder = os.path.join(tmp, split, name)
                os.makedirs(folder)
                for i in range(count):
                    rng = np.random.default_rng([seed, offset, c, i])   # each image on its own
                    size = (int(rng.integers(200, 361)), int(rng.integers(200, 361)))
                    img, _ = compose(rng, sources, backgrounds, [c], size)
                    Image.fromarray(img).save(os.path.join(folder, f"{name}_{i:05d}.jpg"), quality=90)
    return _generate_once(root, stamp, write)


def compose_scene(rng, sources, backgrounds, labels, size, scale=(0.18, 0.5), margin=0.08):
    """A detection scene: objects of the given classes pasted in turn (later ones occlude
    earlier ones) on a canvas larger than the image by ``margin`` on every side, then cut
    to ``size`` (h, w), so objects near the border are truncated. Returns (image, objects)
    with, per object still visible: class index, box of its visible pixels (x1, y1, x2, y2,
    0-based inclusive), truncated (cut by the border) and difficult (under 35% of it
    visible, or a box side under 24 pixels)."""
    h, w = size
    mh, mw = int(margin * h), int(margin * w)
    canvas = background(rng, backgrounds, h + 2 * mh, w + 2 * mw)
    owner = np.full(canvas.shape[:2], -1, dtype=np.int32)
    areas = []
    for j, c in enumerate(labels):
        paste(rng, canvas, *sources[CLASSES[c]], scale=scale, owner=owner, index=j)
        areas.append(int((owner == j).sum()))
    whole = [int((owner == j).sum()) for j in range(len(labels))]   # after all occlusion
    inside = owner[mh:mh + h, mw:mw + w]
    objects = []
    for j, c in enumerate(labels):
        ys, xs = np.nonzero(inside == j)
        if len(xs) < 30:
            continue                                    # hidden or cut away: not annotated
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        visible = len(xs) / max(1, areas[j])
        objects.append({"class": int(c), "box": box,
                        "truncated": len(xs) < whole[j],
                        "difficult": visible < 0.35 or min(box[2] - box[0], box[3] - box[1]) + 1 < 24})
    img = canvas[mh:mh + h, mw:mw + w]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


def make_voc(root, seed=0, trainval=300, test=300):
    """Write the detection variant in the VOC devkit layout, root/VOCdevkit/VOC2007/
    {JPEGImages, Annotations, ImageSets/Main}: images of 300-500 pixels per side with 1-4
    objects each (boxes, truncated and difficult flags in the XML), split into trainval and
    test, with the devkit's per-class image lists (1 / 0 / -1). Returns the VOC2007 folder."""
    from minispp.data.voc import annotation_xml, write_image_sets
    stamp = {"generator": GENERATOR_VERSION, "variant": "voc", "seed": seed,
             "trainval": trainval, "test": test, "classes": list(CLASSES)}

    def write(tmp):
        folder = os.path.join(tmp, "VOCdevkit", "VOC2007")
        for sub in ("JPEGImages", "Annotations"):
            os.makedirs(os.path.join(folder, sub))
        sources, backgrounds = _sources()
        n = 0
        for split, count in (("trainval", trainval), ("test", test)):
            ids, per_image = [], []
            for _ in range(count):
                n += 1
                image_id = f"{n:06d}"
                rng = np.random.default_rng([seed, 2, n])
                size = (int(rng.integers(300, 501)), int(rng.integers(300, 501)))
                count_objects = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.2, 0.1]))
                labels = rng.integers(0, len(CLASSES), count_objects)
                img, objects = compose_scene(rng, sources, backgrounds, labels, size)
                objs = [{"name": CLASSES[o["class"]], "truncated": int(o["truncated"]),
                         "difficult": int(o["difficult"]),
                         "bbox": tuple(v + 1 for v in o["box"])} for o in objects]
                Image.fromarray(img).save(os.path.join(folder, "JPEGImages", f"{image_id}.jpg"),
                                          quality=90)
                with open(os.path.join(folder, "Annotations", f"{image_id}.xml"), "w") as f:
                    f.write(annotation_xml(image_id, size[1], size[0], objs))
                ids.append(image_id)
                per_image.append(objs)
            write_image_sets(folder, split, ids, per_image, CLASSES)
    _generate_once(root, stamp, write)
    return os.path.join(os.fspath(root), "VOCdevkit", "VOC2007")


def preview(root, path, per_class=4, tile=100):
    """A grid picture (PNG or JPEG, by extension) of the first images of every class."""
    tiles = []
    for name in CLASSES:
        row = []
        for i in range(per_class):
            img = Image.open(os.path.join(root, "train", name, f"{name}_{i:05d}.jpg")).convert("RGB")
            img.thumbnail((tile - 4, tile - 4))
            cell = Image.new("RGB", (tile, tile), (255, 255, 255))
            cell.paste(img, ((tile - img.width) // 2, (tile - img.height) // 2))
            row.append(np.asarray(cell))
        tiles.append(np.concatenate(row, axis=1))
    grid = np.concatenate(tiles, axis=0)
    # two class rows side by side: a wider, shorter picture
    half = (len(CLASSES) + 1) // 2 * tile
    grid = np.concatenate([grid[:half], grid[half:]], axis=1)
    Image.fromarray(grid).save(path, quality=85)
