"""Pictures of conv feature maps, as the paper's Fig. 2 (Sec. 2.1): for chosen filters of a
conv layer, the layer's map over a few images, and the image regions where the filter
responds most strongly over a set of images (the receptive field of the strongest cell,
from minispp.geometry.receptive_field, the rule of ``Model.feature_geometry()``).

Images are resized so min(h, w) = scale (the test views' 256 by default) and normalized as
the net's inputs are (``Model.input_normalization()``, the mean image warped to the image's
size); the layer runs on the whole image, whatever its size (the point of Fig. 2). A filter's
strongest regions are each from another image: for every image the cell with the filter's
largest response, the images ranked by that response.
"""
import os
import sys
from typing import NamedTuple

import numpy as np

from layers import Conv, MaxPool
from minispp.data.imagefolder import IMAGE_EXTENSIONS, BadImage, load_rgb
from minispp.data.transforms import resize_min_side, to_input
from minispp.geometry import receptive_field

DEFAULT_SCALE = 256
DEFAULT_COUNT = 4            # filters chosen when none are given: the most strongly responding


class Region(NamedTuple):
    """One strongest response of a filter: its value, the image (index into the images), the
    cell (y, x) of the map and its receptive field (x1, y1, x2, y2) in the resized image's
    pixels, clipped to the image."""
    value: float
    image: int
    cell: tuple
    box: tuple


class Responses(NamedTuple):
    """What filter_responses found: layer, filters (channel indices), geometry (S, offset,
    receptive-field size), images (the resized uint8 images), names, maps (per image an
    (F, h, w) float32 array, the chosen filters' maps) and strongest {filter: [Region]}."""
    layer: str
    filters: tuple
    geometry: tuple
    images: list
    names: list
    maps: list
    strongest: dict


def image_files(folder, limit=None):
    """The image files under folder (sub-folders included), sorted by path; at most limit."""
    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder} is not a folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ValueError(f"--images {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return found[:limit] if limit else found


def load_images(paths, report=None):
    """[(path, uint8 image)] of the readable files; an unreadable one is reported and skipped."""
    report = report or (lambda msg: print(msg, file=sys.stderr))
    out = []
    for p in paths:
        try:
            out.append((p, load_rgb(p)))
        except BadImage as err:
            report(f"skipped: {err}")
    if not out:
        raise ValueError("no readable image among the files given")
    return out


def layer_geometry(model, layer):
    """(S, offset, size) of a conv-trunk layer's map: cell x' is centred on pixel
    offset + S x' and sees size x size pixels (minispp.geometry.receptive_field over the
    conv and pooling layers up to and including it)."""
    names = [s.name for s in model.specs[:model.trunk_length]]
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not in {model.definition}'s conv layers; "
                         f"choose one of {names}")
    specs = model.specs[:names.index(layer) + 1]
    layers = [s.make() for s in specs if s.is_a(Conv, MaxPool)]
    return receptive_field([(lay.kernel[0], lay.stride[0], lay.pad[0]) for lay in layers])


def receptive_box(cell, geometry, image_hw):
    """(x1, y1, x2, y2) pixels of the receptive field of cell (y, x), clipped to the image."""
    S, offset, size = geometry
    half = (size - 1) / 2.0
    cy, cx = offset + S * cell[0], offset + S * cell[1]
    h, w = image_hw
    return (max(0.0, cx - half), max(0.0, cy - half), min(w - 1.0, cx + half), min(h - 1.0, cy + half))


def filter_responses(model, images, layer="conv5", filters=None, scale=DEFAULT_SCALE, top=6,
                     count=DEFAULT_COUNT, mean=None, pixel_scale=None):
    """The chosen filters' maps over images and their strongest regions.

    images: [(name, uint8 (h, w, 3))]. filters: channel indices (0-based), or None for the
    `count` filters with the largest response over all images. scale: the shorter side the
    images are resized to (None: as they are). top: regions per filter (one per image, the
    strongest first). mean, pixel_scale: the input normalization (default: the model's).
    Returns Responses.
    """
    if mean is None or pixel_scale is None:
        m, p = model.input_normalization()
        mean = m if mean is None else mean
        pixel_scale = p if pixel_scale is None else pixel_scale
    geometry = layer_geometry(model, layer)
    resized, full_maps = [], []
    for _, img in images:
        im = resize_min_side(img, scale) if scale else img
        x = to_input(im, mean, pixel_scale)[None]
        trunk = model.trunk(x.shape[2:])
        out = trunk.outputs(x, [layer])[layer]
        resized.append(im)
        full_maps.append(np.array(out[0], dtype=np.float32))
        trunk.release()
    C = full_maps[0].shape[0]
    peaks = np.stack([m.reshape(C, -1).max(axis=1) for m in full_maps])      # (images, C)
    if filters is None:
        filters = tuple(int(f) for f in np.argsort(-peaks.max(axis=0), kind="stable")[:count])
    filters = tuple(int(f) for f in filters)
    for f in filters:
        if not 0 <= f < C:
            raise ValueError(f"filter {f} does not exist: {layer} has {C} filters (0..{C - 1})")
    strongest = {}
    for f in filters:
        order = np.argsort(-peaks[:, f], kind="stable")[:top]
        regions = []
        for i in order:
            fmap = full_maps[i][f]
            cell = tuple(int(v) for v in np.unravel_index(np.argmax(fmap), fmap.shape))
            regions.append(Region(float(fmap[cell]), int(i), cell,
                                  receptive_box(cell, geometry, resized[i].shape[:2])))
        strongest[f] = regions
    return Responses(layer, filters, geometry, resized, [n for n, _ in images],
                     [m[list(filters)] for m in full_maps], strongest)


def _pyplot():
    """(matplotlib.pyplot, Rectangle), or ValueError saying how to install matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise ValueError("the feature-map picture needs matplotlib: pip install 'minispp[plots]' "
                         "(or pip install matplotlib)") from None
    return plt, Rectangle


def render(responses, path, maps=3):
    """Write the picture to path (PNG, atomically): a first row with `maps` images, then one
    row per filter: its map over each of those images (the strongest cell marked), and its
    strongest regions over all images (green rectangles: the receptive fields). Needs
    matplotlib (the `plots` extra); without it ValueError, and nothing is written."""
    plt, Rectangle = _pyplot()
    maps = min(maps, len(responses.images))
    top = max(len(r) for r in responses.strongest.values())
    cols = maps + top
    rows = 1 + len(responses.filters)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(maps):
        axes[0, j].imshow(responses.images[j])
        axes[0, j].set_title(os.path.basename(responses.names[j])[:18], fontsize=7)
    fig.suptitle(f"{responses.layer}: each filter's map over the images above (left; red: its "
                 f"strongest cell) and its strongest responses over {len(responses.images)} "
                 f"images (right; green: the receptive field)", fontsize=8)
    for r, f in enumerate(responses.filters, start=1):
        k = responses.filters.index(f)
        for j in range(maps):
            fmap = responses.maps[j][k]
            ax = axes[r, j]
            ax.imshow(fmap, cmap="gray", interpolation="nearest")
            y, x = np.unravel_index(np.argmax(fmap), fmap.shape)
            ax.plot([x], [y], marker="o", markersize=5, markerfacecolor="none", color="red")
            ax.set_title(f"filter {f}", fontsize=7)
        for j, reg in enumerate(responses.strongest[f]):
            ax = axes[r, maps + j]
            ax.imshow(responses.images[reg.image])
            x1, y1, x2, y2 = reg.box
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False,
                                   edgecolor="lime", linewidth=1.5))
            ax.set_title(f"{reg.value:.2f}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / rows))
    tmp = f"{path}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def visualize(model, folder, out, layer="conv5", filters=None, scale=DEFAULT_SCALE, limit=100,
              top=6, maps=3, report=None):
    """`minispp visualize`: filter_responses over the first `limit` images under folder, the
    picture written to out. Returns the Responses."""
    _pyplot()                                       # before the work, not after it
    responses = filter_responses(model, load_images(image_files(folder, limit), report), layer,
                                 filters, scale, top)
    render(responses, out, maps)
    return responses
