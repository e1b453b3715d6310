"""`minispp proposals`, `detect-train`, `detect-test`, `detect` and `detect-time`: the
SPP-net detector (paper Sec. 4), each calling its library function in train.detection."""

import json
import os
import sys


from train.cli.common import add_device_argument, at_least, ints, writable_file

EXAMPLES = {
    "detect-train": """examples:
  minispp detect-train --voc data/embedded-voc --checkpoint runs/zf5/best.h5 --out runs/det
  minispp detect-train --voc /data/VOCdevkit --checkpoint zf5.h5 --out runs/voc07 \
      --ft-iters 250000 --ft-lr 1e-4 --ft-drop-at 0.833 --proposals-file voc_2007_trainval.mat
Writes DETDIR/detector.h5 (trunk, fine-tuned fc6/fc7/fc8, SVMs, box regressors), the
proposal and conv5 caches (resumable) and train_log.json.""",
    "detect-test": """examples:
  minispp detect-test --voc data/embedded-voc --split test --model runs/det --json r.json
  minispp detect-test --voc data/embedded-voc --model runs/det --scales 480,576,688,864,1200
  minispp detect-test --voc data/embedded-voc --model runs/det --combine runs/det2   # two nets""",
}

def register(sub, fmt):
    """Add this pipeline's subcommands to the parser."""
    pr = sub.add_parser("proposals", help="selective search proposals of a VOC split, and their recall",
                        epilog="examples:\n  minispp proposals --voc data/embedded-voc --split test --out runs/det",
                        formatter_class=fmt)
    pr.add_argument("--voc", required=True)
    pr.add_argument("--split", default="test")
    pr.add_argument("--out", required=True, help="folder; proposals go to OUT/proposals/<id>.h5")
    pr.add_argument("--top", type=int, default=2000, help="boxes kept per image (at least 1)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--limit", type=int, help="only the first N images")
    pr.add_argument("--jobs", type=int, help="processes for selective search (default: every core)")
    pr.add_argument("--file", help="precomputed proposals (.mat/.npz/.npy/.h5, layouts in minispp/proposals.py; "
                                   "never unpickled) instead of selective search")
    pr.add_argument("--distributed", action="store_true",
                    help="split the images over MPI ranks (default: on when started by mpiexec)")
    pr.set_defaults(run=cmd_proposals)

    dt = sub.add_parser("detect-train", help="train the SPP-net detector on a VOC devkit",
                        epilog=EXAMPLES["detect-train"], formatter_class=fmt)
    dt.add_argument("--voc", required=True)
    dt.add_argument("--checkpoint", required=True, help="a classification checkpoint with SPP")
    dt.add_argument("--out", required=True)
    dt.add_argument("--split", default="trainval")
    dt.add_argument("--scales", default="688", help="fine-tuning scales: 688, or 480,576,688,864,1200")
    dt.add_argument("--svm-scales", default="688;480,576,688,864,1200",
                    help="the test scale sets to train SVMs and box regressors for, ';' between sets "
                         "(detect-test --scales picks the matching ones)")
    dt.add_argument("--proposals", type=int, default=2000, help="selective search boxes per image")
    dt.add_argument("--proposals-file", help="precomputed proposals instead of selective search")
    dt.add_argument("--ft-iters", type=int, default=600, help="fine-tuning mini-batches (paper: 300k)")
    dt.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning rate (paper: 1e-4)")
    dt.add_argument("--ft-drop-at", type=float, default=0.8, help="fraction of iterations before lr/10")
    dt.add_argument("--ft-batch", type=int, default=128)
    dt.add_argument("--svm-feature", default="fc7", choices=["fc7", "pool5"])
    dt.add_argument("--svm-C", type=float, help="SVM C (default: the paper's 0.001 scaled by "
                    "5011 / training images, keeping its balance of loss and regularization)")
    dt.add_argument("--hard-rounds", type=int, default=1, help="hard negative mining rounds")
    dt.add_argument("--svm-cache-windows", type=int, default=20000,
                    help="the most negatives kept per class between mining passes (memory: about "
                         "8 KB each for fc7); the other windows' features are recomputed image by "
                         "image from the conv5 cache")
    dt.add_argument("--bbox-stats-mb", type=int, default=4096,
                    help="memory for the box regressors' sufficient statistics at once (MB)")
    dt.add_argument("--limit", type=int, help="only the first N training images")
    dt.add_argument("--seed", type=int, default=0)
    dt.add_argument("--quiet", action="store_true")
    add_device_argument(dt)
    dt.add_argument("--distributed", action="store_true",
                    help="split the proposal and conv5 caching over MPI ranks (default: on when "
                         "started by mpiexec); rank 0 then trains")
    dt.set_defaults(run=cmd_detect_train)

    dc = sub.add_parser("detect-calibrate",
                        help="fit a trained detector's score calibration again (model combination)",
                        epilog="examples:\n  minispp detect-calibrate --model runs/det\n"
                               "  minispp detect-calibrate --model runs/det --scales 688 --folds 3",
                        formatter_class=fmt)
    dc.add_argument("--model", required=True, help="DETDIR of detect-train (rewritten in place)")
    dc.add_argument("--voc", help="the VOC root it was trained on (default: the one it records)")
    dc.add_argument("--split", help="its training split (default: the one it records)")
    dc.add_argument("--limit", type=int, help="its training images (default: the count it records)")
    dc.add_argument("--folds", type=int, default=2,
                    help="out-of-fold scores from SVMs trained on the other FOLDS - 1 folds of "
                         "the training images (1: scored by the final SVMs, in-sample)")
    dc.add_argument("--scales", action="append",
                    help="only the SVMs of this scale set (repeatable; default: all)")
    dc.add_argument("--quiet", action="store_true")
    add_device_argument(dc)
    dc.set_defaults(run=cmd_detect_calibrate)

    de = sub.add_parser("detect-test", help="VOC07 detection mAP of a trained detector",
                        epilog=EXAMPLES["detect-test"], formatter_class=fmt)
    de.add_argument("--voc", required=True)
    de.add_argument("--split", default="test")
    de.add_argument("--model", required=True, help="DETDIR of detect-train")
    de.add_argument("--json", help="write the result here")
    de.add_argument("--scales", help="test scales (default: the training ones)")
    de.add_argument("--scorer", default="svm", choices=["svm", "softmax", "random"],
                    help="window scores: the SVMs, fc8's softmax, or random (the chance baseline)")
    de.add_argument("--combine", help="a second DETDIR (of the same classes): model combination")
    de.add_argument("--raw-scores", action="store_true",
                    help="combine the detectors' raw SVM scores (default: each calibrated by "
                         "Platt scaling fitted on out-of-fold scores of its training images)")
    de.add_argument("--choose-per-class", action="store_true",
                    help="per class, keep the union or one detector alone, whichever gives the "
                         "higher AP on the detectors' held-out training detections (default: the "
                         "union for every class)")
    de.add_argument("--limit", type=int, help="only the first N test images (at least 1)")
    de.add_argument("--no-conv-cache", action="store_true",
                    help="compute each test image's conv5 maps and write none (the same "
                         "scores as the cached maps; no disk for the test split)")
    de.add_argument("--quiet", action="store_true")
    add_device_argument(de)
    de.set_defaults(run=cmd_detect_test)

    dd = sub.add_parser("detect", help="detect objects in images and draw them (PNG)",
                        epilog="examples:\n  minispp detect photo.jpg other.png --model runs/det --out runs/det/pictures",
                        formatter_class=fmt)
    dd.add_argument("images", nargs="+")
    dd.add_argument("--model", required=True)
    dd.add_argument("--out", required=True,
                    help="folder for <stem>-detections.png and <stem>-projection.png, stem the "
                         "image's base name without extension; an input whose stem an earlier "
                         "input of the run has (a/x.jpg, b/x.jpg) gets x-2, x-3, ... An image "
                         "that cannot be read or searched is reported and skipped; the exit "
                         "status is then 1")
    dd.add_argument("--threshold", type=float, default=0.0, help="draw detections scoring above this")
    dd.add_argument("--top", type=int, default=3,
                    help="also draw the image's TOP best detections whatever their score (0: none; "
                         "not negative)")
    dd.add_argument("--scales", help="default: the training scales")
    add_device_argument(dd)
    dd.set_defaults(run=cmd_detect)

    dm = sub.add_parser("detect-time", help="SPP-net vs the R-CNN way, seconds per image (Table 10)",
                        epilog="examples:\n  minispp detect-time --voc data/embedded-voc --model runs/det --images 3",
                        formatter_class=fmt)
    dm.add_argument("--voc", required=True)
    dm.add_argument("--model", required=True)
    dm.add_argument("--split", default="test")
    dm.add_argument("--images", type=int, default=3, help="images timed (at least 1)")
    dm.add_argument("--out", help="write the Markdown table here (default: MODEL/timing.md)")
    add_device_argument(dm)
    dm.set_defaults(run=cmd_detect_time)

def cmd_proposals(a):
    from train.detection.windows import split_proposals
    r = split_proposals(a.voc, a.split, a.out, top=a.top, seed=a.seed, limit=a.limit, jobs=a.jobs,
                        precomputed=a.file)
    if r is None:                 # another MPI rank than 0: its share is cached, rank 0 reports
        return 0
    print(f"{r['images']} images, {r['boxes_per_image']:.0f} boxes per image on average; "
          f"recall of {r['objects']} non-difficult objects: IoU 0.5: {r['recall'][0.5]:.1%}, "
          f"IoU 0.7: {r['recall'][0.7]:.1%}")
    return 0


def cmd_detect_train(a):
    at_least(a.svm_cache_windows, 1, "--svm-cache-windows")
    at_least(a.bbox_stats_mb, 1, "--bbox-stats-mb")
    from train.detection.detector import train_detector
    det = train_detector(a.voc, a.checkpoint, a.out, split=a.split, limit=a.limit, progress=not a.quiet,
                   precomputed=a.proposals_file, scales=tuple(ints(a.scales, "--scales")),
                   svm_scales=tuple(tuple(ints(v, "--svm-scales")) for v in a.svm_scales.split(";") if v.strip()),
                   proposals=a.proposals, ft_iters=a.ft_iters, ft_lr=a.ft_lr,
                   ft_drop_at=a.ft_drop_at, ft_batch=a.ft_batch, svm_feature=a.svm_feature,
                   svm_C=a.svm_C, hard_rounds=a.hard_rounds, seed=a.seed,
                   svm_cache_windows=a.svm_cache_windows, bbox_stats_mb=a.bbox_stats_mb)
    if det is None:               # another MPI rank than 0: its share of the caches is done
        return 0
    print(f"detector written to {os.path.join(a.out, 'detector.h5')}")
    return 0

def cmd_detect_calibrate(a):
    from train.detection.detector import calibrate_detector
    at_least(a.folds, 1, "--folds")
    at_least(a.limit, 1, "--limit")
    sets = [tuple(ints(v, "--scales")) for v in a.scales] if a.scales else None
    det = calibrate_detector(a.model, voc=a.voc, split=a.split, limit=a.limit, folds=a.folds,
                             scale_sets=sets, progress=not a.quiet)
    if det is not None:           # None: another MPI rank than 0, its share of the caches done
        print(f"calibration written to {os.path.join(a.model, 'detector.h5')}")
    return 0


def cmd_detect_test(a):
    from train.detection.detector import load_detector
    from train.detection.testing import evaluate_detector
    at_least(a.limit, 1, "--limit")
    scales = tuple(ints(a.scales, "--scales")) if a.scales else None
    for s in scales or ():
        at_least(s, 1, "each of --scales")
    det = load_detector(a.model)
    others = (load_detector(a.combine),) if a.combine else ()
    for other in others:
        if other.classes != det.classes:
            raise ValueError(f"--combine {a.combine} detects the classes {other.classes}, --model "
                             f"{a.model} {det.classes}: model combination needs the same classes "
                             f"in the same order")
    r = evaluate_detector(det, a.voc, a.split, workdir=a.model, scales=scales, scorer=a.scorer,
                          limit=a.limit, progress=not a.quiet, others=others,
                          conv_cache=not a.no_conv_cache, calibrate=not a.raw_scores,
                          choose=a.choose_per_class)
    kept = r.get("members", {}).get("per_class", {})
    if kept:
        print(f"combination chosen per class on {r['members']['held_out_training_images']} held-out "
              f"training images")
    for c, ap in r["bbox"]["per_class"].items():
        print(f"  {c:>14s}: AP {ap:.1%} ({r['no_bbox']['per_class'][c]:.1%} without box regression)"
              + (f"; {kept[c]}" if c in kept else ""))
    print(f"VOC07 detection mAP {r['bbox']['mAP']:.2%} with box regression, "
          f"{r['no_bbox']['mAP']:.2%} without; {r['images']} images, scales {r['scales']}; "
          f"{r['seconds_per_image_scoring']:.2f} s per image, peak memory {r['peak_rss_mb']:.0f} MiB")
    loc = r["localization"]
    print(f"box regression on the {loc['windows']} proposals with IoU in [0.5, 0.9) with an object: "
          f"mean IoU {loc['mean_iou_before']:.3f} -> {loc['mean_iou_after']:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(r, model=os.path.abspath(a.model), voc=os.path.abspath(a.voc)), fh, indent=1)
    return 0

def cmd_detect(a):
    from minispp.data.imagefolder import load_rgb

    from train.detection.detector import load_detector
    from train.detection.drawing import (best_window_projection, draw_detections, shown_detections,
                                         unique_stems)
    from train.detection.testing import detect_image
    at_least(a.top, 0, "--top")
    det = load_detector(a.model)
    scales = tuple(ints(a.scales, "--scales")) if a.scales else tuple(det.config["scales"])
    det.use_scales(scales)
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot make the output folder {a.out}: {err}") from None
    skipped = []
    for path, stem in zip(a.images, unique_stems(a.images)):
        try:
            img = load_rgb(path)
            boxes, scores, _, dets, maps = detect_image(det, img, scales)
        except ValueError as err:          # unreadable, too small, ...: report, go on
            msg = str(err) if path in str(err) else f"{path}: {err}"
            print(f"error: {msg} (skipped)", file=sys.stderr)
            skipped.append(path)
            continue
        stem = os.path.join(a.out, stem)
        draw_detections(img, dets, det.classes, a.threshold, top=a.top).save(stem + "-detections.png")
        scale, cells, picture = best_window_projection(det, img, boxes, scores, maps, scales)
        picture.save(stem + "-projection.png")
        shown = shown_detections(dets, a.threshold, a.top)
        best = ", ".join(f"{det.classes[c]} {s:.2f}" for c, _, s in shown[:5])
        print(f"{path}: {len(boxes)} proposals; {sum(s > a.threshold for _, _, s in shown)} "
              f"detections above {a.threshold}, {len(shown)} drawn ({best}): "
              f"{stem}-detections.png; best window's projection (scale {scale}, conv5 cells "
              f"{tuple(int(v) for v in cells)}): {stem}-projection.png")
    if skipped:
        print(f"error: {len(skipped)} of {len(a.images)} images skipped: {', '.join(skipped)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_detect_time(a):
    from train.detection.detector import load_detector
    from train.detection.timing import time_split
    at_least(a.images, 1, "--images")
    det = load_detector(a.model)
    out = a.out or os.path.join(a.model, "timing.md")
    writable_file(out, "--out")                 # before the timing, not after it
    _, table = time_split(det, a.voc, a.split, a.images, a.model)
    print(table)
    with open(out, "w") as fh:
        fh.write(table)
    return 0
