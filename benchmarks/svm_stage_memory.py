"""Peak resident memory of the detector's SVM and box-regression stages alone, on the first N
training images (README, "VOC 2007 at its real size"): run it at two N and compare.

The detector's fc6/fc7 start from the classification net (no fine-tuning, so the stage runs
at once); proposals and conv5 maps come from DETDIR's caches (computed where missing).

    python benchmarks/svm_stage_memory.py --voc data/embedded-voc --checkpoint runs/zf5/best.h5 \\
        --work runs/det300 --limit 100 [--scales 480,576,688,864,1200] [--stages bbox]

--scales: the scale set of the features (default the detector's, 688); --stages: svms, bbox
or both (default). A stage's peak is the process's VmHWM after it; the resident size before
each stage is printed too.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detector_setup import add_arguments, detector_and_images  # noqa: E402
from train.detection.svms import train_box_regressors, train_svms  # noqa: E402
from train.detection.windows import scale_caches  # noqa: E402
from train.resources import peak_rss_mb  # noqa: E402


def rss_mb():
    """The resident size now (MiB), from /proc (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--scales", help="the features' scale set, e.g. 480,576,688,864,1200")
    ap.add_argument("--stages", default="svms,bbox", help="svms, bbox or svms,bbox")
    a = ap.parse_args()
    stages = [v.strip() for v in a.stages.split(",")]
    if not stages or any(v not in ("svms", "bbox") for v in stages):
        ap.error(f"--stages: svms, bbox or both, got {a.stages!r}")
    det, images, conv = detector_and_images(a)
    if a.scales:
        scales = tuple(int(v) for v in a.scales.split(","))
        conv = scale_caches(a.work, det.model, scales, det.mean, det.pixel_scale)
    out, log = {"images": len(images), "setup_mib": peak_rss_mb()}, []
    with tempfile.TemporaryDirectory(dir=a.work, prefix="svm-scratch-") as scratch:
        if "svms" in stages:
            out["before_svms_rss_mib"] = rss_mb()
            t = time.perf_counter()
            train_svms(det, images, conv, log.append, False, scratch=scratch)
            out.update(svms_mib=peak_rss_mb(), svms_s=time.perf_counter() - t)
        if "bbox" in stages:
            out["before_bbox_rss_mib"] = rss_mb()
            t = time.perf_counter()
            train_box_regressors(det, images, conv, log.append, False, scratch=scratch)
            out.update(bbox_mib=peak_rss_mb(), bbox_s=time.perf_counter() - t)
    out["log"] = log
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
