"""The paper's full-image feature comparisons (Sec. 3.2, Tables 8-9 in spirit) on one VOC
devkit: center crop vs warp vs full image at s = 224, the full image at s = 392, for the
pool5, SPP, fc6 and fc7 features of one model, each scored by VOC07 classification mAP of
linear SVMs. Caches are reused (and resumed) between runs."""
import json
import os

from minispp.storage.feature_cache import read_cache

from train.features.extract import LAYERS, check_arguments, extract
from train.features.svm import voc_classification

CONFIGS = (("crop", 224), ("warp", 224), ("full", 224), ("full", 392))


def run_feature_comparison(checkpoint, voc, out, train_split="trainval", test_split="test",
                           batch=16, workers=2, progress=True, layers=LAYERS, configs=CONFIGS,
                           skip_unreadable=False):
    """Extract every (view, scale) for both splits, train and test the SVMs of every layer,
    write out/results.json and out/results.md; return the Markdown. Arguments are checked
    before anything is made; a missing or unreadable image is an error unless
    skip_unreadable (train.features.extract)."""
    for view, s in configs:
        check_arguments(list(layers), s, view, batch, workers)
    if train_split == test_split:
        raise ValueError(f"--train-split and --test-split are both {train_split!r}: the SVMs "
                         f"must be tested on other images than they were trained on")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot make the output folder {out}: {err}") from None
    results, speed = [], {}
    for view, s in configs:
        paths = {}
        for split in (train_split, test_split):
            paths[split] = {layer: os.path.join(out, f"{split}-{view}-s{s}-{layer}.h5") for layer in layers}
            r = extract(checkpoint, "voc", voc, split, list(layers), s, view, paths[split],
                        batch=batch, workers=workers, progress=progress,
                        skip_unreadable=skip_unreadable)
            if r["images_per_s"]:
                speed.setdefault((view, s), []).append(r["images_per_s"])
        for layer in layers:
            res = voc_classification(read_cache(paths[train_split][layer]),
                                     read_cache(paths[test_split][layer]))
            results.append({"view": view, "scale": s, "layer": layer, "mAP": res["mAP"],
                            "C": res["C"], "per_class": res["per_class"]})
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"checkpoint": os.path.abspath(checkpoint), "voc": os.path.abspath(voc),
                   "results": results}, fh, indent=1)
    table = markdown(results, layers, configs, speed)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(table)
    return table


def markdown(results, layers, configs, speed=None):
    cols = [f"{v} {s}" for v, s in configs]
    lines = ["VOC07 classification mAP (%) of linear SVMs on l2-normalized features; "
             "rows: layer, columns: view and scale s (shorter side).", "",
             "| layer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for layer in layers:
        cells = []
        for v, s in configs:
            r = next((r for r in results if r["layer"] == layer and r["view"] == v and r["scale"] == s), None)
            cells.append("n/a" if r is None else f"{100 * r['mAP']:.1f}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if speed:
        lines += ["", "Extraction speed (images/s, every layer in one pass): " + ", ".join(
            f"{v} {s}: {sum(x) / len(x):.1f}" for (v, s), x in speed.items())]
    return "\n".join(lines) + "\n"
