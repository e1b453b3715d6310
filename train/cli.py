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
    t.add_argument("--data", required=True, help="folder with train/ and val/ class folders")
    t.add_argument("--net", default="zf5", help="zf5, convnet5, overfeat5, overfeat7, small")
    t.add_argument("--spp", default="6,3,2,1", help="pyramid levels, or 'none' for the no-SPP baseline")
    t.add_argument("--form", default="appendix", choices=["appendix", "fixed"], help="SPP bin form")
    t.add_argument("--mode", default="multi", choices=["single", "multi", "random"],
                   help="single: 224; multi: 224/180 alternating by epoch; random: [180, 224] per epoch")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=0.01, help="base learning rate (default 0.01)")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--patience", type=int, default=3, help="epochs without val improvement before lr/10")
    t.add_argument("--mean", default="image", help="'image' (the training mean image) or a constant such as 128")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2, help="data loading threads")
    t.add_argument("--out", required=True, help="output folder: checkpoint.h5, best.h5, log.csv/json, curves.png")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("test", help="top-1/top-5 error of a checkpoint", epilog=EXAMPLES["test"],
                       formatter_class=fmt)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--view", default="center", choices=["center", "10view", "full"])
    e.add_argument("--batch", type=int, default=32)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--json", help="write the result here")
    e.add_argument("--quiet", action="store_true")

    c = sub.add_parser("compare", help="ZF-5 no-SPP vs SPP single vs SPP multi, every test view",
                       epilog=EXAMPLES["compare"], formatter_class=fmt)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True, help="one run folder per variant and seed, results.md")
    c.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    c.add_argument("--epochs", type=int, default=12)
    c.add_argument("--batch", type=int, default=16)
    c.add_argument("--lr", type=float, default=0.01)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--quiet", action="store_true")

    bl = sub.add_parser("baselines", help="colour-histogram and tiny-crop linear SVM accuracies",
                        epilog="examples:\n  minispp baselines --data data/embedded", formatter_class=fmt)
    bl.add_argument("--data", required=True)

    g = sub.add_parser("embedded", help="generate the embedded default data set",
                       epilog=EXAMPLES["embedded"], formatter_class=fmt)
    g.add_argument("--out", required=True)
    g.add_argument("--train", type=int, default=120, help="training images per class")
    g.add_argument("--val", type=int, default=30, help="validation images per class")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--voc", action="store_true", help="the detection variant in the VOC devkit layout")
    g.add_argument("--trainval", type=int, default=300, help="VOC variant: trainval images")
    g.add_argument("--test", type=int, default=300, help="VOC variant: test images")

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
    fc.add_argument("--quiet", action="store_true")

    pr = sub.add_parser("proposals", help="selective search proposals of a VOC split, and their recall",
                        epilog="examples:\n  minispp proposals --voc data/embedded-voc --split test --out runs/det",
                        formatter_class=fmt)
    pr.add_argument("--voc", required=True)
    pr.add_argument("--split", default="test")
    pr.add_argument("--out", required=True, help="folder; proposals go to OUT/proposals/<id>.h5")
    pr.add_argument("--top", type=int, default=2000)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--limit", type=int, help="only the first N images")
    pr.add_argument("--jobs", type=int, help="processes for selective search (default: every core)")
    pr.add_argument("--file", help="precomputed proposals (.mat/.npz/.npy/.h5) instead of selective search")

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
    de.add_argument("--combine", help="a second DETDIR: model combination")
    de.add_argument("--limit", type=int, help="only the first N test images")
    de.add_argument("--quiet", action="store_true")

    dd = sub.add_parser("detect", help="detect objects in images and draw them (PNG)",
                        epilog="examples:\n  minispp detect photo.jpg other.png --model runs/det --out runs/det/pictures",
                        formatter_class=fmt)
    dd.add_argument("images", nargs="+")
    dd.add_argument("--model", required=True)
    dd.add_argument("--out", required=True, help="folder for <image>-detections.png and <image>-projection.png")
    dd.add_argument("--threshold", type=float, default=0.0, help="draw detections scoring above this")
    dd.add_argument("--top", type=int, default=3,
                    help="also draw the image's TOP best detections whatever their score (0: none)")
    dd.add_argument("--scales", help="default: the training scales")

    dm = sub.add_parser("detect-time", help="SPP-net vs the R-CNN way, seconds per image (Table 10)",
                        epilog="examples:\n  minispp detect-time --voc data/embedded-voc --model runs/det --images 3",
                        formatter_class=fmt)
    dm.add_argument("--voc", required=True)
    dm.add_argument("--model", required=True)
    dm.add_argument("--split", default="test")
    dm.add_argument("--images", type=int, default=3)
    dm.add_argument("--out", help="write the Markdown table here (default: MODEL/timing.md)")
    return ap.parse_args(argv)


def cmd_train(a):
    from nets import parse_spp

    from .classify import Trainer
    mean = a.mean if a.mean == "image" else float(a.mean)
    trainer = Trainer(a.data, a.out, net=a.net, spp=parse_spp(a.spp), form=a.form, mode=a.mode,
                      epochs=a.epochs, batch=a.batch, lr=a.lr, momentum=a.momentum,
                      weight_decay=a.weight_decay, seed=a.seed, workers=a.workers, mean=mean,
                      patience=a.patience, resume=a.resume, progress=not a.quiet)
    history = trainer.run()
    if history and trainer.epoch >= trainer.cfg["epochs"]:
        last = history[-1]
        print(f"done: {trainer.epoch} epochs, val top-1 error {last['val_top1']:.1%}, top-5 "
              f"{last['val_top5']:.1%} (center crop); checkpoint {trainer.ckpt_path}")
    return 0


def cmd_test(a):
    import nets
    from minispp.imagefolder import ImageFolder

    from .evaluate import evaluate
    from .views import normalization
    model = nets.load(a.checkpoint)
    cfg = model.meta.get("config", {})
    dataset = ImageFolder(os.path.join(a.data, a.split), classes=cfg.get("classes"))
    mean, scale = normalization(model.extras, cfg.get("mean", "image"))
    result = evaluate(model, dataset, a.view, mean, batch=a.batch, workers=a.workers,
                      progress=not a.quiet, scale=scale)
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
    seeds = tuple(int(s) for s in a.seeds.split(","))
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
    from .features import extract, output_paths
    kind, root = next((k, getattr(a, k)) for k in ("voc", "caltech", "folder") if getattr(a, k))
    split = a.split or {"voc": "trainval", "caltech": "all", "folder": "train"}[kind]
    layers = [v.strip() for v in a.layer.split(",")]
    scales = _ints(a.scale, "--scale")
    paths = output_paths(a.out, layers, scales)
    for s in scales:
        r = extract(a.checkpoint, kind, root, split, layers, s, a.view,
                    {layer: paths[layer, s] for layer in layers}, batch=a.batch,
                    workers=a.workers, progress=not a.quiet, command="minispp " + " ".join(sys.argv[1:]))
        rate = f", {r['images_per_s']:.1f} images/s" if r["images_per_s"] else " (already cached)"
        print(f"s={s} {a.view}: {r['images']} images, {r['computed']} computed in "
              f"{r['seconds']:.1f} s{rate}, {len(r['skipped'])} unreadable")
        for layer in layers:
            print(f"  {layer}: {paths[layer, s]}")
    return 0


def cmd_svm(a):
    from minispp.feature_cache import check_identity, read_cache

    from .svm import caltech_classification, folder_classification, voc_classification
    train = read_cache(a.train)
    test = read_cache(a.test) if a.test else None
    kind = train.identity["data"]
    if test is not None:
        same = ("checkpoint", "net", "net_args", "layer", "scale", "view", "data", "mean")
        check_identity(a.test, {k: test.identity.get(k) for k in same},
                       {k: train.identity.get(k) for k in same},
                       advice=f"Train and test features must come from the same model and "
                              f"arguments (the training cache is {a.train})")
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
    det = load_detector(a.model)
    others = (load_detector(a.combine),) if a.combine else ()
    scales = tuple(_ints(a.scales, "--scales")) if a.scales else None
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
    det = load_detector(a.model)
    scales = tuple(_ints(a.scales, "--scales")) if a.scales else tuple(det.config["scales"])
    det.use_scales(scales)
    os.makedirs(a.out, exist_ok=True)
    S, offset, receptive = det.model.feature_geometry()
    for path in a.images:
        img = load_rgb(path)
        boxes = selective_search(img, seed=det.config["seed"], top=det.config["proposals"])
        maps = conv5_maps(det.model, img, scales, det.mean, det.pixel_scale)
        scores, regressed = score_windows(det, maps, img.shape[:2], boxes)
        dets = detections_from_scores(scores, regressed, det.config["nms"], det.config["max_per_image"])
        stem = os.path.join(a.out, os.path.splitext(os.path.basename(path))[0])
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
    return 0


def cmd_detect_time(a):
    from minispp.proposals import ProposalCache
    from minispp.voc import VOCDataset

    from .det_time import time_table
    from .detector import load_detector
    det = load_detector(a.model)
    ds = VOCDataset(a.voc, a.split)
    props = ProposalCache(os.path.join(a.model, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"])
    images = []
    for i in range(min(a.images, len(ds))):
        img = ds.load(i)[0]
        images.append((ds.ids[i], img, props.get(ds.ids[i], lambda img=img: img)))
    _, table = time_table(det, images)
    print(table)
    out = a.out or os.path.join(a.model, "timing.md")
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
                                 progress=not a.quiet))
    return 0


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    from .classify import TrainingStopped
    try:
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
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
