"""The cost of one image under each test view (paper Sec. 3.1.4-3.1.5; issue 14, item 1).

ZF-5 + SPP (6,3,2,1) with random weights (the cost does not depend on them), decoded uint8
images of the embedded data set's sizes (sides drawn from 200-360 pixels), and each view's
whole path from the decoded image to its averaged softmax: resizing, cropping or flipping,
the mean subtraction, the forward passes. center, 10view (one batch of 10 crops) and full go
through the fixed-size nets as `minispp test` runs them; 10view-fm and multiview compute conv5
once per scale and mirror image and pool the windows (train.classify.multiview). The views
run interleaved (benchmarks/timing.py, paired_times), one image each per round, rotating the
order, so that a slow spell of a shared machine falls on every view alike; the figures are
the median seconds per image and the median ratio to the 10 image crops of the same round.

    python benchmarks/bench_views.py --rounds 5
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # an entry point: before NumPy loads (train.cli)
import numpy as np  # noqa: E402
from timing import paired_times  # noqa: E402

import nets  # noqa: E402
from layers.softmax_loss import softmax  # noqa: E402
from train.classify.multiview import FeatureMapViews  # noqa: E402
from train.classify.views import InputMaker  # noqa: E402


def view_functions(model, mean, pixel_scale):
    """{view: fn(img) -> (K,) probabilities}."""
    def image_view(kind):
        make = InputMaker(kind, mean, pixel_scale=pixel_scale)

        def run(img):
            x = make(img, None)
            x = x[None] if x.ndim == 3 else x
            return softmax(model.instance(len(x), x.shape[2:]).forward(x)).mean(axis=0)
        return run
    fns = {v: image_view(v) for v in ("center", "10view", "full")}
    for v in ("10view-fm", "multiview"):
        fns[v] = FeatureMapViews(model, v, mean, pixel_scale)
    return fns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (one image each)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    model = nets.build("zf5", num_classes=10, spp=(6, 3, 2, 1), rng=rng)
    mean = rng.uniform(100, 130, (3, 224, 224)).astype(np.float32)
    images = [rng.integers(0, 256, (int(rng.integers(200, 361)), int(rng.integers(200, 361)), 3),
                           dtype=np.uint8) for _ in range(a.rounds + 1)]
    fns = view_functions(model, mean, 1 / 60)
    for fn in fns.values():                        # warm-up: Numba, every net instance
        fn(images[-1])
    calls = [0]

    def timed(name):
        def run():                                 # round k: every view on images[k]
            fns[name](images[calls[0] // len(fns)])
            calls[0] += 1
        return run
    times = paired_times({name: timed(name) for name in fns}, a.rounds, warmup=0)
    print(f"ZF-5 + SPP (6,3,2,1) on {os.cpu_count()} cores, one image at a time, {a.rounds} "
          f"round(s), image sizes (h, w) {[im.shape[:2] for im in images[:a.rounds]]}")
    print(f"  {'view':<10} {'views':>6} {'s / image':>10} {'vs 10view':>10}")
    counts = {"center": 1, "10view": 10, "full": 1, "10view-fm": 10, "multiview": "96+2"}
    for name, t in times.items():
        ratio = statistics.median(x / r for x, r in zip(t, times["10view"]))
        print(f"  {name:<10} {counts[name]!s:>6} {statistics.median(t):>10.3f} {ratio:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
