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
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import nets  # noqa: E402
from minispp.data.voc import VOCDataset  # noqa: E402
from train.detection.detector import Detector  # noqa: E402
from train.detection.svms import _first_pass_rows, _rows_of, _window_features  # noqa: E402
from train.detection.windows import prepare_images  # noqa: E402


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
    ap.add_argument("--voc", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--work", required=True, help="a DETDIR whose proposal and conv5 caches to use")
    ap.add_argument("--limit", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    model = nets.load(a.checkpoint)
    ds = VOCDataset(a.voc, "trainval")
    det = Detector(model, ds.classes, {})
    det.init_head_from_model()
    images, conv = prepare_images(ds, a.work, det, False, a.limit)
    selected(det, images[:2], conv)                      # warm-up: every kernel compiled
    times = {"every window": [], "selected": []}
    for _ in range(a.rounds):                            # interleaved
        for name, fn in (("every window", every_window), ("selected", selected)):
            t = time.perf_counter()
            windows = fn(det, images, conv)
            times[name].append(time.perf_counter() - t)
            print(f"{name}: {windows} windows through fc7 in {times[name][-1]:.1f} s", flush=True)
    full, sel = min(times["every window"]), min(times["selected"])
    print(f"{len(images)} images, best of {a.rounds}: every window {full:.1f} s, selected "
          f"{sel:.1f} s: {full / sel:.1f}x")


if __name__ == "__main__":
    main()
