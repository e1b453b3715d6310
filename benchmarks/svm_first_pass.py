"""The SVM stage's first pass, two ways, in one process on the first N training images of a
DETDIR's caches (README, "VOC 2007 at its real size"):

- every window: the features of all of an image's windows (the first pass before the
  geometry-only selection, and what each hard-negative round still computes);
- selected: the geometry pass (_first_pass_rows) and the features of the positives, the
  initial random negatives and the norm sample only (train/detection/svms.py).

The detector's fc6/fc7 are the classification net's (no fine-tuning: the costs are the same).

    python benchmarks/svm_first_pass.py --voc data/embedded-voc --checkpoint runs/zf5/best.h5 \\
        --work runs/det300 --limit 20
"""
import argparse
import os
import sys
from statistics import median

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detector_setup import add_arguments, detector_and_images  # noqa: E402
from timing import paired_times  # noqa: E402
from train.detection.svms import _first_pass_rows, _rows_of, _window_features  # noqa: E402


def every_window(det, images, conv):
    return sum(len(_window_features(det, conv, im)) for im in images)


def selected(det, images, conv):
    init, sample, _ = _first_pass_rows(det, images, det.config["seed"] + 1)
    n = 0
    for j, im in enumerate(images):
        need = np.unique(np.concatenate([np.arange(len(im.gt_boxes)), _rows_of(sample, j)]
                                        + [_rows_of(i, j) for i in init]))
        if need.size:
            n += len(_window_features(det, conv, im, need))
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    det, images, conv = detector_and_images(a)
    selected(det, images[:2], conv)          # warm-up on two images: every kernel compiled
    counts = {}

    def run(name, fn):
        def once():
            counts[name] = fn(det, images, conv)
        return once
    times = paired_times({"every window": run("every window", every_window),
                          "selected": run("selected", selected)}, a.rounds, warmup=0)
    for name, t in times.items():
        print(f"{name}: {counts[name]} windows through fc7, " + ", ".join(f"{v:.1f}" for v in t)
              + " s", flush=True)
    full, sel = median(times["every window"]), median(times["selected"])
    ratio = median(f / s for f, s in zip(times["every window"], times["selected"]))
    print(f"{len(images)} images, medians of {a.rounds} interleaved rounds: every window "
          f"{full:.1f} s, selected {sel:.1f} s; median ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
