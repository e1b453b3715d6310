"""The minispp command line: `minispp COMMAND --help` for each command's options and examples.

    minispp embedded --out data/embedded
    minispp compare --data data/embedded --out runs/compare --seeds 0,1
    minispp train --data DIR --net zf5 --spp 6,3,2,1 --mode multi --epochs N --batch B --out OUTDIR [--resume]
    minispp test --checkpoint OUTDIR/checkpoint.h5 --data DIR --split val --view center|10view|full --json RESULT.json
    minispp features --checkpoint CKPT --voc DIR|--caltech DIR|--folder DIR --split S --layer fc7 --scale 224 --view full --out CACHE.h5
    minispp svm --train CACHE --test CACHE --json RESULT.json
    minispp cache info CACHE.h5
    minispp features-compare --checkpoint CKPT --voc DIR --out runs/features
    minispp proposals --voc DIR --split test --out DIR
    minispp detect-train --voc DIR --checkpoint CKPT --out DETDIR
    minispp detect-test --voc DIR --split test --model DETDIR --json RESULT.json [--scales 688 | --scales 480,576,688,864,1200]
    minispp detect IMAGE... --model DETDIR --out PNGDIR
    minispp detect-time --voc DIR --model DETDIR
"""
import minispp  # noqa: F401  (first: it sets OpenBLAS's thread timeout before NumPy loads)

import argparse
import codecs
import json
import os
import sys

import numpy as np

EXAMPLES = {
    "train": """examples:
  minispp train --data data/embedded --net zf5 --spp 6,3,2,1 --mode multi --epochs 10 --batch 32 --out runs/zf5
  minispp train --data /data/imagenet --net overfeat7 --spp none --mode single --epochs 90 --out runs/of7
  minispp train --data data/embedded --out runs/zf5 --resume            # continue after Ctrl-C or a kill
layout: DIR/train/<class>/<images> and DIR/val/<class>/<images> (ImageNet class folders)""",
    "test": """examples:
  minispp test --checkpoint runs/zf5/checkpoint.h5 --data data/embedded --split val --view 10view --json r.json
  minispp test --checkpoint runs/zf5/best.h5 --data data/embedded --view full""",
    "compare": """examples:
  minispp compare --data data/embedded --out runs/compare --seeds 0,1 --epochs 12
  (6 trainings of about 20 minutes each on 2 cores; interrupted runs resume)""",
    "features": """examples:
  minispp features --checkpoint runs/zf5/best.h5 --voc data/embedded-voc --split trainval \
      --layer fc7 --scale 224 --view full --out runs/features/trainval-fc7.h5
  minispp features --checkpoint runs/zf5/best.h5 --voc /data/VOCdevkit --split test \
      --layer pool5,fc7 --scale 224,392 --out runs/voc/test.h5     # -> test-<layer>-s<scale>.h5
  minispp features --checkpoint runs/zf5/best.h5 --caltech /data/caltech101 --split all \
      --layer spp --scale 224 --out runs/caltech/spp.h5
  minispp features --checkpoint runs/zf5/best.h5 --folder data/embedded --split val --layer fc6 --out val.h5
A killed extraction resumes when the same command is run again; a cache made by another
checkpoint or with other arguments is refused.""",
    "svm": """examples:
  minispp svm --train runs/features/trainval-fc7.h5 --test runs/features/test-fc7.h5 --json r.json
  minispp svm --train runs/caltech/spp.h5 --json r.json        # Caltech101: 10 splits of one cache
  minispp svm --train train.h5 --test val.h5 --C 1             # fixed C instead of the search""",
    "features-compare": """examples:
  minispp features-compare --checkpoint runs/zf5/best.h5 --voc data/embedded-voc --out runs/features
Extracts (or reuses) caches for crop/warp/full at 224 and full at 392, for pool5, spp, fc6 and
fc7, trains the SVMs and writes OUT/results.md and OUT/results.json.""",
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
    "embedded": """examples:
  minispp embedded --out data/embedded                 # 10 classes, 120 train + 30 val images each
  minispp embedded --out /tmp/small --train 20 --val 5 --seed 3
  minispp embedded --voc --out data/embedded-voc       # VOC devkit layout, 300 trainval + 300 test""",
}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="minispp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a classification net", epilog=EXAMPLES["train"],
                       formatter_class=fmt)
    # The run's settings default to None ("not given"): a new run takes train.classify.DEFAULTS
    # (the values in the help), a resumed run its recorded ones; given with --resume, each
    # must equal the recorded one (a larger --epochs extends the run).
    t.add_argument("--data", help="folder with train/ and val/ class folders (with --resume: "
                                  "the recorded one when left out)")
    t.add_argument("--net", help="zf5, convnet5, overfeat5, overfeat7, small (default zf5)")
    t.add_argument("--spp", help="pyramid levels, or 'none' for the no-SPP baseline (default 6,3,2,1)")
    t.add_argument("--form", choices=["appendix", "fixed"], help="SPP bin form (default appendix)")
    t.add_argument("--mode", choices=["single", "multi", "random"],
                   help="single: 224; multi: 224/180 alternating by epoch; random: [180, 224] per "
                        "epoch (default multi)")
    t.add_argument("--epochs", type=int, help="default 10; with --resume, more than recorded "
                                              "extends a run")
    t.add_argument("--batch", type=int, help="default 32")
    t.add_argument("--lr", type=float, help="base learning rate (default 0.01)")
    t.add_argument("--momentum", type=float, help="default 0.9")
    t.add_argument("--weight-decay", type=float, help="default 0.0005")
    t.add_argument("--patience", type=int, help="epochs without val improvement before lr/10 (default 3)")
    t.add_argument("--mean", help="'image' (the training mean image, default) or a constant such as 128")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--blas-threads", type=int,
                   help="OpenBLAS threads, recorded with the run (default 2): the GEMMs' rounding "
                        "depends on it, so the same value gives bit-identical runs on any core count")
    t.add_argument("--workers", type=int, default=2, help="data loading threads (no effect on results)")
    t.add_argument("--out", required=True, help="output folder: checkpoint.h5, best.h5, log.csv/json, curves.png")
    t.add_argument("--resume", action="store_true",
                   help="continue the run recorded in --out exactly where it stopped (its settings; "
                        "differing ones are refused)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("test", help="top-1/top-5 error of a checkpoint", epilog=EXAMPLES["test"],
                       formatter_class=fmt)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--view", default="center", choices=["center", "10view", "full"])
    e.add_argument("--batch", type=int, default=32, help="images per forward pass (at least 1)")
    e.add_argument("--workers", type=int, default=2, help="data loading threads (at least 1)")
    e.add_argument("--json", help="write the result here (its folder must exist; checked first)")
    e.add_argument("--quiet", action="store_true")

    c = sub.add_parser("compare", help="ZF-5 no-SPP vs SPP single vs SPP multi, every test view",
                       epilog=EXAMPLES["compare"], formatter_class=fmt)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True, help="one run folder per variant and seed, results.md")
    c.add_argument("--seeds", default="0,1", help="comma-separated distinct integer seeds (default 0,1)")
    c.add_argument("--epochs", type=int, default=12, help="at least 1")
    c.add_argument("--batch", type=int, default=16, help="at least 1")
    c.add_argument("--lr", type=float, default=0.01, help="above 0")
    c.add_argument("--workers", type=int, default=2, help="at least 1")
    c.add_argument("--quiet", action="store_true")

    bl = sub.add_parser("baselines", help="colour-histogram and tiny-crop linear SVM accuracies",
                        epilog="examples:\n  minispp baselines --data data/embedded", formatter_class=fmt)
    bl.add_argument("--data", required=True)

    g = sub.add_parser("embedded", help="generate the embedded default data set",
                       epilog=EXAMPLES["embedded"], formatter_class=fmt)
    g.add_argument("--out", required=True)
    g.add_argument("--train", type=int, default=120, help="training images per class (at least 1)")
    g.add_argument("--val", type=int, default=30, help="validation images per class (at least 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--voc", action="store_true", help="the detection variant in the VOC devkit layout")
    g.add_argument("--trainval", type=int, default=300, help="VOC variant: trainval images (at least 1)")
    g.add_argument("--test", type=int, default=300, help="VOC variant: test images (at least 1)")

    f = sub.add_parser("features", help="full-image features of a data set split into HDF5 caches",
                       epilog=EXAMPLES["features"], formatter_class=fmt)
    f.add_argument("--checkpoint", required=True)
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc", help="VOC devkit (VOCdevkit/VOC2007 or a folder holding it)")
    src.add_argument("--caltech", help="Caltech101 (101_ObjectCategories or its parent)")
    src.add_argument("--folder", help="class folders: DIR/<split>/<class>/<images>")
    f.add_argument("--split", default=None, help="trainval/test (VOC), all (Caltech101), train/val (folder)")
    f.add_argument("--layer", default="fc7", help="pool5, spp, fc6, fc7, or a comma list")
    f.add_argument("--scale", default="224", help="shorter side s in pixels, or a comma list (224,392)")
    f.add_argument("--view", default="full", choices=["full", "crop", "warp"])
    f.add_argument("--out", required=True, help="cache file (.h5); with several layers or scales "
                   "the stem of <stem>-<layer>-s<scale>.h5")
    f.add_argument("--batch", type=int, default=16)
    f.add_argument("--workers", type=int, default=2)
    f.add_argument("--skip-unreadable", action="store_true",
                   help="report a missing or unreadable image and keep it as a zero row flagged "
                        "invalid (left out by `minispp svm`) instead of stopping with an error")
    f.add_argument("--quiet", action="store_true")

    v = sub.add_parser("svm", help="linear SVMs on feature caches: VOC mAP or accuracy",
                       epilog=EXAMPLES["svm"], formatter_class=fmt)
    v.add_argument("--train", required=True, help="training cache")
    v.add_argument("--test", help="test cache (Caltech101: optional, the same cache)")
    v.add_argument("--json", help="write the result here")
    v.add_argument("--C", type=float, default=None, help="SVM cost; default: chosen on 20%% of the training data")
    v.add_argument("--splits", type=int, default=10, help="Caltech101: number of random splits")

    ci = sub.add_parser("cache", help="inspect a feature cache",
                        epilog="examples:\n  minispp cache info runs/features/test-fc7.h5",
                        formatter_class=fmt)
    ci.add_argument("action", choices=["info"])
    ci.add_argument("file")

    fc = sub.add_parser("features-compare", help="full vs crop vs warp, pool5/spp/fc6/fc7, 224 vs 392",
                        epilog=EXAMPLES["features-compare"], formatter_class=fmt)
    fc.add_argument("--checkpoint", required=True)
    fc.add_argument("--voc", required=True)
    fc.add_argument("--out", required=True)
    fc.add_argument("--train-split", default="trainval")
    fc.add_argument("--test-split", default="test")
    fc.add_argument("--batch", type=int, default=16)
    fc.add_argument("--workers", type=int, default=2)
    fc.add_argument("--skip-unreadable", action="store_true",
                    help="as for `minispp features`: skip missing or unreadable images")
    fc.add_argument("--quiet", action="store_true")

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
    dt.add_argument("--limit", type=int, help="only the first N training images")
    dt.add_argument("--seed", type=int, default=0)
    dt.add_argument("--quiet", action="store_true")

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
    de.add_argument("--limit", type=int, help="only the first N test images (at least 1)")
    de.add_argument("--quiet", action="store_true")

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

    dm = sub.add_parser("detect-time", help="SPP-net vs the R-CNN way, seconds per image (Table 10)",
                        epilog="examples:\n  minispp detect-time --voc data/embedded-voc --model runs/det --images 3",
                        formatter_class=fmt)
    dm.add_argument("--voc", required=True)
    dm.add_argument("--model", required=True)
    dm.add_argument("--split", default="test")
    dm.add_argument("--images", type=int, default=3, help="images timed (at least 1)")
    dm.add_argument("--out", help="write the Markdown table here (default: MODEL/timing.md)")
    return ap.parse_args(argv)


def cmd_train(a):
    from nets import parse_spp

    from .classify import Trainer
    given = {"net": a.net, "form": a.form, "mode": a.mode, "epochs": a.epochs, "batch": a.batch,
             "lr": a.lr, "momentum": a.momentum, "weight_decay": a.weight_decay, "seed": a.seed,
             "patience": a.patience, "blas_threads": a.blas_threads}
    given = {k: v for k, v in given.items() if v is not None}      # None: not given
    if a.spp is not None:
        given["spp"] = parse_spp(a.spp)
    if a.mean is not None:
        try:
            given["mean"] = a.mean if a.mean == "image" else float(a.mean)
        except ValueError:
            raise ValueError(f"--mean must be 'image' or a number, got {a.mean!r}") from None
    trainer = Trainer(a.data, a.out, workers=a.workers, resume=a.resume, progress=not a.quiet,
                      **given)
    trainer.run()                 # prints the summary: best epoch, its errors, best.h5
    return 0


def cmd_test(a):
    import nets
    from minispp.imagefolder import ImageFolder

    from .evaluate import evaluate
    _at_least(a.batch, 1, "--batch")
    _at_least(a.workers, 1, "--workers")
    if a.json:
        _writable_file(a.json, "--json")        # before the evaluation, not after it
    model = nets.load(a.checkpoint)
    cfg = model.meta.get("config", {})
    dataset = ImageFolder(os.path.join(a.data, a.split), classes=cfg.get("classes"))
    mean, pixel_scale = model.input_normalization()
    result = evaluate(model, dataset, a.view, mean, batch=a.batch, workers=a.workers,
                      progress=not a.quiet, pixel_scale=pixel_scale)
    result.update({"checkpoint": os.path.abspath(a.checkpoint), "data": os.path.abspath(a.data),
                   "split": a.split, "skipped": len(result["skipped"])})
    print(f"{a.view}: top-1 error {result['top1']:.2%}, top-5 error {result['top5']:.2%} "
          f"on {result['images']} images ({result['skipped']} skipped)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def cmd_compare(a):
    from .compare import run_comparison
    seeds = tuple(_ints(a.seeds, "--seeds"))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {a.seeds} names a seed twice (each seed is one run folder)")
    for value, flag in ((a.epochs, "--epochs"), (a.batch, "--batch"), (a.workers, "--workers")):
        _at_least(value, 1, flag)
    if not a.lr > 0 or a.lr == float("inf"):
        raise ValueError(f"--lr must be a positive number, got {a.lr}")
    table = run_comparison(a.data, a.out, seeds=seeds, epochs=a.epochs, batch=a.batch, lr=a.lr,
                           workers=a.workers, progress=not a.quiet)
    print(table)
    return 0


def cmd_baselines(a):
    import warnings

    from .baselines import baseline_accuracies
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, acc in baseline_accuracies(a.data).items():
            print(f"{name}: top-1 error {1 - acc:.1%} (linear SVM)")
    return 0


def cmd_embedded(a):
    from minispp.embedded import make_classification, make_voc
    for flag in ("--train", "--val", "--trainval", "--test"):
        _at_least(getattr(a, flag[2:]), 1, flag)
    if a.voc:
        root = make_voc(a.out, seed=a.seed, trainval=a.trainval, test=a.test)
    else:
        root = make_classification(a.out, seed=a.seed, train_per_class=a.train, val_per_class=a.val)
    print(f"embedded data set in {root}")
    return 0


def _ints(text, what):
    try:
        return [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{what} must be integers separated by commas, got {text!r}") from None


def cmd_features(a):
    from minispp.feature_cache import check_output

    from .features import check_arguments, extract, output_paths
    kind, root = next((k, getattr(a, k)) for k in ("voc", "caltech", "folder") if getattr(a, k))
    split = a.split or {"voc": "trainval", "caltech": "all", "folder": "train"}[kind]
    layers = [v.strip() for v in a.layer.split(",")]
    scales = _ints(a.scale, "--scale")
    if len(set(scales)) != len(scales):
        raise ValueError(f"a --scale is given twice: {a.scale}")
    for s in scales:                    # every argument and output before anything is written
        check_arguments(layers, s, a.view, a.batch, a.workers)
    paths = output_paths(a.out, layers, scales)
    for path in paths.values():
        check_output(path)
    for s in scales:
        r = extract(a.checkpoint, kind, root, split, layers, s, a.view,
                    {layer: paths[layer, s] for layer in layers}, batch=a.batch,
                    workers=a.workers, progress=not a.quiet, command="minispp " + " ".join(sys.argv[1:]),
                    skip_unreadable=a.skip_unreadable)
        rate = f", {r['images_per_s']:.1f} images/s" if r["images_per_s"] else " (already cached)"
        print(f"s={s} {a.view}: {r['images']} images, {r['computed']} computed in "
              f"{r['seconds']:.1f} s{rate}, {len(r['skipped'])} unreadable"
              + (" (skipped: flagged invalid, zero rows)" if r["skipped"] else ""))
        for layer in layers:
            print(f"  {layer}: {paths[layer, s]}")
    return 0


def cmd_svm(a):
    from minispp.feature_cache import check_identity, read_cache

    from .svm import (caltech_classification, check_C, check_same_classes, check_writable,
                      folder_classification, voc_classification)
    check_C(a.C)
    if a.splits < 1:
        raise ValueError(f"--splits must be a positive integer, got {a.splits}")
    check_writable(a.json)
    train = read_cache(a.train)
    test = read_cache(a.test) if a.test else None
    kind = train.identity.get("data")
    if test is not None:
        same = ("checkpoint", "net", "net_args", "layer", "scale", "view", "data", "mean")
        check_identity(a.test, {k: test.identity.get(k) for k in same},
                       {k: train.identity.get(k) for k in same},
                       advice=f"Train and test features must come from the same model and "
                              f"arguments (the training cache is {a.train})")
        check_same_classes(train, test)
        if kind != "caltech" and test.identity.get("ids_digest") == train.identity.get("ids_digest"):
            raise ValueError(f"--train {a.train} and --test {a.test} hold the same images "
                             f"(split {train.identity.get('split')!r}): test on another split")
    if kind == "caltech":
        if test is not None and test.identity["ids_digest"] != train.identity["ids_digest"]:
            raise ValueError("Caltech101 splits are drawn from one cache of every image; give "
                             "--train (and optionally the same file as --test)")
        r = caltech_classification(train, splits=a.splits, C=a.C)
        print(f"Caltech101, {a.splits} splits: mean per-class accuracy "
              f"{r['mean_class_accuracy']:.2%} ± {r['std']:.2%}")
    elif test is None:
        raise ValueError(f"{a.train} is a {kind} cache: give --test CACHE")
    elif kind == "voc":
        r = voc_classification(train, test, C=a.C)
        for c, ap in r["per_class"].items():
            print(f"  {c:>14s}: AP {ap:.1%}")
        print(f"VOC07 classification mAP {r['mAP']:.2%} over {len(r['per_class'])} classes "
              f"(C = {r['C']:g}, {r['seconds']:.1f} s)")
    else:
        r = folder_classification(train, test, C=a.C)
        print(f"accuracy {r['accuracy']:.2%}, mean per-class accuracy "
              f"{r['mean_class_accuracy']:.2%} (C = {r['C']:g})")
    skipped = sum(len(r.get(k, [])) for k in ("train_skipped", "test_skipped", "skipped"))
    if skipped:
        print(f"{skipped} image(s) skipped as unreadable at extraction were left out "
              f"(listed in the result's *skipped fields)")
    r.update(train=os.path.abspath(a.train), test=os.path.abspath(a.test) if a.test else None,
             identity=train.identity)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh, indent=1, default=str)
    return 0


def cmd_proposals(a):
    from minispp.proposals import ProposalCache, recall
    from minispp.voc import VOCDataset
    from tqdm import tqdm
    for flag in ("--top", "--limit", "--jobs"):
        _at_least(getattr(a, flag[2:]), 1, flag)
    ds = VOCDataset(a.voc, a.split)
    cache = ProposalCache(os.path.join(a.out, "proposals"), seed=a.seed, top=a.top, precomputed=a.file)
    n = len(ds) if a.limit is None else min(a.limit, len(ds))
    with tqdm(total=n, desc="proposals", unit="img") as bar:
        cache.fill(ds.ids[:n], [ds.image_path(i) for i in range(n)], a.jobs, bar.update)
    props, gts = [], []
    for i in range(n):
        props.append(cache.get(ds.ids[i], lambda i=i: ds.load(i)[0]))
        boxes, _, diff = ds.object_boxes(i)
        gts.append(boxes[~diff])
    r = recall(props, gts)
    print(f"{n} images, {np.mean([len(p) for p in props]):.0f} boxes per image on average; "
          f"recall of {sum(len(g) for g in gts)} non-difficult objects: IoU 0.5: {r[0.5]:.1%}, "
          f"IoU 0.7: {r[0.7]:.1%}")
    return 0


def cmd_detect_train(a):
    from .detector import train_detector
    train_detector(a.voc, a.checkpoint, a.out, split=a.split, limit=a.limit, progress=not a.quiet,
                   precomputed=a.proposals_file, scales=tuple(_ints(a.scales, "--scales")),
                   svm_scales=tuple(tuple(_ints(v, "--svm-scales")) for v in a.svm_scales.split(";") if v.strip()),
                   proposals=a.proposals, ft_iters=a.ft_iters, ft_lr=a.ft_lr,
                   ft_drop_at=a.ft_drop_at, ft_batch=a.ft_batch, svm_feature=a.svm_feature,
                   svm_C=a.svm_C, hard_rounds=a.hard_rounds, seed=a.seed)
    print(f"detector written to {os.path.join(a.out, 'detector.h5')}")
    return 0


def cmd_detect_test(a):
    from .detector import evaluate_detector, load_detector
    _at_least(a.limit, 1, "--limit")
    scales = tuple(_ints(a.scales, "--scales")) if a.scales else None
    for s in scales or ():
        _at_least(s, 1, "each of --scales")
    det = load_detector(a.model)
    others = (load_detector(a.combine),) if a.combine else ()
    for other in others:
        if other.classes != det.classes:
            raise ValueError(f"--combine {a.combine} detects the classes {other.classes}, --model "
                             f"{a.model} {det.classes}: model combination needs the same classes "
                             f"in the same order")
    r = evaluate_detector(det, a.voc, a.split, workdir=a.model, scales=scales, scorer=a.scorer,
                          limit=a.limit, progress=not a.quiet, others=others)
    for c, ap in r["bbox"]["per_class"].items():
        print(f"  {c:>14s}: AP {ap:.1%} ({r['no_bbox']['per_class'][c]:.1%} without box regression)")
    print(f"VOC07 detection mAP {r['bbox']['mAP']:.2%} with box regression, "
          f"{r['no_bbox']['mAP']:.2%} without; {r['images']} images, scales {r['scales']}")
    loc = r["localization"]
    print(f"box regression on the {loc['windows']} proposals with IoU in [0.5, 0.9) with an object: "
          f"mean IoU {loc['mean_iou_before']:.3f} -> {loc['mean_iou_after']:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(r, model=os.path.abspath(a.model), voc=os.path.abspath(a.voc)), fh, indent=1)
    return 0


def cmd_detect(a):
    from minispp.geometry import window_to_feature_map
    from minispp.imagefolder import load_rgb
    from minispp.selective_search import selective_search
    from minispp.transforms import resize_min_side

    from .det_draw import draw_detections, draw_projection, shown_detections
    from .det_features import choose_scales, conv5_maps, scale_factors
    from .detector import detections_from_scores, load_detector, score_windows
    _at_least(a.top, 0, "--top")
    det = load_detector(a.model)
    scales = tuple(_ints(a.scales, "--scales")) if a.scales else tuple(det.config["scales"])
    det.use_scales(scales)
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot make the output folder {a.out}: {err}") from None
    S, offset, receptive = det.model.feature_geometry()
    used, skipped = set(), []

    def picture_stem(path):
        """The input's base name without extension, with -2, -3, ... added when an earlier
        input of the run has it (a/x.jpg, b/x.jpg), compared case-insensitively: no
        picture overwrites another on any file system."""
        base = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "image"
        stem, n = base, 1
        while stem.casefold() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.casefold())
        return stem
    for path in a.images:
        try:
            img = load_rgb(path)
            boxes = selective_search(img, seed=det.config["seed"], top=det.config["proposals"])
            if len(boxes) == 0:
                raise ValueError(f"selective search found no window in this "
                                 f"{img.shape[1]} x {img.shape[0]} image")
            maps = conv5_maps(det.model, img, scales, det.mean, det.pixel_scale)
            scores, regressed = score_windows(det, maps, img.shape[:2], boxes)
        except ValueError as err:          # unreadable, too small, ...: report, go on
            msg = str(err) if path in str(err) else f"{path}: {err}"
            print(f"error: {msg} (skipped)", file=sys.stderr)
            skipped.append(path)
            continue
        dets = detections_from_scores(scores, regressed, det.config["nms"], det.config["max_per_image"])
        stem = os.path.join(a.out, picture_stem(path))
        draw_detections(img, dets, det.classes, a.threshold, top=a.top).save(stem + "-detections.png")
        c, r = np.unravel_index(np.argmax(scores), scores.shape)[::-1]
        box = boxes[r]
        k = int(choose_scales(box[None], img.shape[:2], scales)[0])
        f = scale_factors(img.shape[:2], scales)[k]
        m = maps[scales[k]]
        cells = window_to_feature_map(box[None] * f, S, m.shape[2:], offset)[0]
        draw_projection(resize_min_side(img, scales[k]), box * f, cells, S, offset,
                        receptive).save(stem + "-projection.png")
        shown = shown_detections(dets, a.threshold, a.top)
        best = ", ".join(f"{det.classes[c]} {s:.2f}" for c, _, s in shown[:5])
        print(f"{path}: {len(boxes)} proposals; {sum(s > a.threshold for _, _, s in shown)} "
              f"detections above {a.threshold}, {len(shown)} drawn ({best}): "
              f"{stem}-detections.png; best window's projection (scale {scales[k]}, conv5 cells "
              f"{tuple(int(v) for v in cells)}): {stem}-projection.png")
    if skipped:
        print(f"error: {len(skipped)} of {len(a.images)} images skipped: {', '.join(skipped)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_detect_time(a):
    from minispp.proposals import ProposalCache
    from minispp.voc import VOCDataset

    from .det_time import time_table
    from .detector import load_detector
    _at_least(a.images, 1, "--images")
    det = load_detector(a.model)
    out = a.out or os.path.join(a.model, "timing.md")
    _writable_file(out, "--out")                 # before the timing, not after it
    ds = VOCDataset(a.voc, a.split)
    props = ProposalCache(os.path.join(a.model, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"])
    images = []
    for i in range(min(a.images, len(ds))):
        img = ds.load(i)[0]
        images.append((ds.ids[i], img, props.get(ds.ids[i], lambda img=img: img)))
    _, table = time_table(det, images)
    print(table)
    with open(out, "w") as fh:
        fh.write(table)
    return 0


def cmd_cache(a):
    from minispp.feature_cache import cache_info
    print(cache_info(a.file))
    return 0


def cmd_features_compare(a):
    from .feature_compare import run_feature_comparison
    print(run_feature_comparison(a.checkpoint, a.voc, a.out, train_split=a.train_split,
                                 test_split=a.test_split, batch=a.batch, workers=a.workers,
                                 progress=not a.quiet, skip_unreadable=a.skip_unreadable))
    return 0


# ---- checks of arguments and outputs, before any work (a one-line error, exit status 2) ----------

def _at_least(value, least, flag):
    """ValueError unless the integer option is at least `least` (None: not given, fine)."""
    if value is not None and value < least:
        raise ValueError(f"{flag} must be at least {least}, got {value}")


def _writable_file(path, flag):
    """ValueError unless a file can be written at path (its folder exists and is writable, and
    path is not a folder): checked before a long run, which would otherwise fail at its end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    if (not os.access(folder, os.W_OK | os.X_OK)
            or (os.path.exists(path) and not os.access(path, os.W_OK))):
        raise ValueError(f"{flag} {path} is not writable")


def _writable_dir(path, flag):
    """ValueError unless path is a writable folder or can be made one: the nearest part of it
    that exists is a writable folder (not a file)."""
    full = os.path.abspath(path)
    if os.path.lexists(full) and not os.path.isdir(full):
        raise ValueError(f"{flag} {path} exists and is not a folder")
    probe = full
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be written: {probe} is not writable")


# commands whose --out is a folder they create
_OUT_FOLDERS = ("train", "embedded", "compare", "features-compare", "proposals", "detect-train",
                "detect")


def _check_outputs(a):
    """Refuse an --out folder or a --json file that cannot be written, before the command runs
    (train, embedded ... would otherwise fail after their work, or leave half a run behind)."""
    if a.command in _OUT_FOLDERS:
        _writable_dir(a.out, "--out")
    if getattr(a, "json", None):
        _writable_file(a.json, "--json")


def _escape(err):
    """Codec error handler "minispp.escape": a byte of a file name that is not UTF-8 (a
    surrogate escape from argv, PEP 383) becomes \\xNN, any other unencodable character
    \\uNNNN, as backslashreplace writes it."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        c = ord(ch)
        out.append(f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else
                   f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}")
    return "".join(out), err.end


codecs.register_error("minispp.escape", _escape)


def _printable(text):
    """text on one line, with what is not valid UTF-8 escaped, so printing cannot fail."""
    return " ".join(str(text).splitlines()).encode("utf-8", "minispp.escape").decode("utf-8")


def _tolerant_output():
    """Printing a name that is not valid UTF-8 (or not encodable in the terminal's encoding)
    writes an escape instead of raising UnicodeEncodeError, which would end a finished command
    with an error."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "backslashreplace"):
            try:
                stream.reconfigure(errors="minispp.escape")
            except (AttributeError, ValueError, OSError):
                pass


def _error(err):
    """The one-line message of an expected exception."""
    if isinstance(err, UnicodeEncodeError) and "surrogates" in str(err.reason):
        return (f"the name {_printable(err.object)} is not valid UTF-8 and cannot be stored; "
                f"rename it")
    return _printable(err) or type(err).__name__


def main(argv=None):
    """Run one command. Expected failures (bad arguments or data: ValueError; files: OSError
    such as PermissionError or FileNotFoundError) end with one line `error: ...` on stderr and
    exit status 2; Ctrl-C outside training with `error: interrupted` and 130."""
    a = parse_args(sys.argv[1:] if argv is None else argv)
    _tolerant_output()
    from .classify import TrainingStopped
    try:
        _check_outputs(a)
        commands = {"train": cmd_train, "test": cmd_test, "compare": cmd_compare,
                    "baselines": cmd_baselines, "embedded": cmd_embedded,
                    "features": cmd_features, "svm": cmd_svm, "cache": cmd_cache,
                    "features-compare": cmd_features_compare, "proposals": cmd_proposals,
                    "detect-train": cmd_detect_train, "detect-test": cmd_detect_test,
                    "detect": cmd_detect, "detect-time": cmd_detect_time}
        return commands[a.command](a)
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(f"error: {_error(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
