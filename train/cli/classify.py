"""`minispp train`, `test`, `compare`, `baselines` and `embedded`: the classification
experiments (paper Sec. 3.1), each calling its library function in train.classify or
minispp.data."""

import json
import os


from train.cli.common import add_device_argument, at_least, ints, writable_file

DEFAULT_FILTERS = 4          # train.classify.visualize.DEFAULT_COUNT (not imported: the CLI loads lazily)

EXAMPLES = {
    "train": """examples:
  minispp train --data data/embedded --net zf5 --spp 6,3,2,1 --mode multi --epochs 10 --batch 32 --out runs/zf5
  minispp train --data /data/imagenet --net overfeat7 --spp none --mode single --epochs 90 --out runs/of7
  minispp train --data data/embedded --out runs/zf5 --resume            # continue after Ctrl-C or a kill
  mpiexec -n 2 minispp train --data data/embedded --batch 16 --blas-threads 1 --out runs/zf5-2
      (data-parallel: the global batch of 16 split over 2 ranks; see README "Beyond one machine")
layout: DIR/train/<class>/<images> and DIR/val/<class>/<images> (ImageNet class folders)""",
    "test": """examples:
  minispp test --checkpoint runs/zf5/checkpoint.h5 --data data/embedded --split val --view 10view --json r.json
  minispp test --checkpoint runs/zf5/best.h5 --data data/embedded --view full
  minispp test --checkpoint runs/zf5/best.h5 --data data/embedded --view multiview""",
    "compare": """examples:
  minispp compare --data data/embedded --out runs/compare --seeds 0,1 --epochs 12
  (6 trainings of about 20 minutes each on 2 cores; interrupted runs resume)
  minispp compare --data data/embedded --out runs/compare --seeds 0,1 --epochs 12 \\
      --pyramids 6,3,2,1/4,3,2,1 --modes single --table ablation
  (the 30-bin pyramid against 50 bins and no SPP, Sec. 3.1.2: reuses the first command's
  single-size runs, 2 new trainings)""",
    "visualize": """examples:
  minispp visualize --checkpoint runs/zf5/best.h5 --images data/embedded/val --layer conv5 --out fig2.png
  minispp visualize --checkpoint runs/zf5/best.h5 --images data/embedded/val --filters 55,66,118 --top 8 --out fig2.png""",
    "embedded": """examples:
  minispp embedded --out data/embedded                 # 10 classes, 120 train + 30 val images each
  minispp embedded --out /tmp/small --train 20 --val 5 --seed 3
  minispp embedded --voc --out data/embedded-voc       # VOC devkit layout, 300 trainval + 300 test""",
}

def register(sub, fmt):
    """Add this pipeline's subcommands to the parser."""
    t = sub.add_parser("train", help="train a classification net", epilog=EXAMPLES["train"],
                       formatter_class=fmt)
    # The run's settings default to None ("not given"): a new run takes train.classify.trainer.DEFAULTS
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
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks (default: on when started by mpiexec/srun); "
                        "--batch is the global batch, split over the ranks")
    t.add_argument("--check-every", type=int, default=50,
                   help="steps between the ranks' parameter checksums (no effect on results)")
    add_device_argument(t)
    t.set_defaults(run=cmd_train)

    e = sub.add_parser("test", help="top-1/top-5 error of a checkpoint", epilog=EXAMPLES["test"],
                       formatter_class=fmt)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--view", default="center",
                   choices=["center", "10view", "full", "10view-fm", "multiview"],
                   help="center crop; 10view: 5 crops and their flips; full: the whole image at "
                        "s=256; 10view-fm: the 10 views taken on the conv5 maps; multiview: 96 "
                        "views at 6 scales + 2 full-image views on the conv5 maps (SPP nets)")
    e.add_argument("--batch", type=int, default=32, help="images per forward pass (at least 1)")
    e.add_argument("--workers", type=int, default=2, help="data loading threads (at least 1)")
    e.add_argument("--json", help="write the result here (its folder must exist; checked first)")
    e.add_argument("--quiet", action="store_true")
    add_device_argument(e)
    e.set_defaults(run=cmd_test)

    c = sub.add_parser("compare", help="ZF-5 no-SPP vs SPP single vs SPP multi, every test view",
                       epilog=EXAMPLES["compare"], formatter_class=fmt)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True, help="one run folder per variant and seed, results.md")
    c.add_argument("--seeds", default="0,1", help="comma-separated distinct integer seeds (default 0,1)")
    c.add_argument("--epochs", type=int, default=12, help="at least 1")
    c.add_argument("--batch", type=int, default=16, help="at least 1")
    c.add_argument("--lr", type=float, default=0.01, help="above 0")
    c.add_argument("--workers", type=int, default=2, help="at least 1")
    c.add_argument("--pyramids", default="6,3,2,1",
                   help="SPP pyramids compared, separated by '/': 6,3,2,1/4,3,2,1 adds the 30-bin "
                        "pyramid of Sec. 3.1.2 (default 6,3,2,1)")
    c.add_argument("--modes", default="single,multi",
                   help="training modes of the SPP variants: single, multi, random (default "
                        "single,multi; no SPP is always single-size)")
    c.add_argument("--table", default="results",
                   help="the table's file name in --out: TABLE.md and TABLE.json (default results)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(run=cmd_compare)

    v = sub.add_parser("visualize", help="conv feature maps and strongest responses of chosen "
                                         "filters (the paper's Fig. 2) as a PNG",
                       epilog=EXAMPLES["visualize"], formatter_class=fmt)
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--images", required=True, help="folder of images (sub-folders included)")
    v.add_argument("--layer", default="conv5", help="a conv-trunk layer (default conv5)")
    v.add_argument("--filters", help="0-based filter indices such as 55,66,118 (default: the "
                                     f"{DEFAULT_FILTERS} filters responding most strongly)")
    v.add_argument("--out", required=True, help="the PNG to write (its folder must exist)")
    v.add_argument("--scale", type=int, default=256, help="shorter side the images are resized "
                                                          "to (at least 32; default 256)")
    v.add_argument("--limit", type=int, default=100, help="images read, in path order (at least 1)")
    v.add_argument("--top", type=int, default=6, help="strongest regions per filter (at least 1)")
    v.add_argument("--maps", type=int, default=3, help="images whose maps are shown (at least 1)")
    v.set_defaults(run=cmd_visualize)

    bl = sub.add_parser("baselines", help="colour-histogram and tiny-crop linear SVM accuracies",
                        epilog="examples:\n  minispp baselines --data data/embedded", formatter_class=fmt)
    bl.add_argument("--data", required=True)
    bl.set_defaults(run=cmd_baselines)

    g = sub.add_parser("embedded", help="generate the embedded default data set",
                       epilog=EXAMPLES["embedded"], formatter_class=fmt)
    g.add_argument("--out", required=True)
    g.add_argument("--train", type=int, default=120, help="training images per class (at least 1)")
    g.add_argument("--val", type=int, default=30, help="validation images per class (at least 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--voc", action="store_true", help="the detection variant in the VOC devkit layout")
    g.add_argument("--trainval", type=int, default=300, help="VOC variant: trainval images (at least 1)")
    g.add_argument("--test", type=int, default=300, help="VOC variant: test images (at least 1)")
    g.set_defaults(run=cmd_embedded)

def cmd_train(a):
    from nets import parse_spp

    from train.classify.trainer import Trainer
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
    at_least(a.check_every, 1, "--check-every")
    trainer = Trainer(a.data, a.out, workers=a.workers, resume=a.resume, progress=not a.quiet,
                      check_every=a.check_every, **given)
    trainer.run()                 # prints the summary: best epoch, its errors, best.h5
    return 0

def cmd_test(a):
    import nets
    from minispp.data.imagefolder import ImageFolder

    from train.classify.evaluate import evaluate
    at_least(a.batch, 1, "--batch")
    at_least(a.workers, 1, "--workers")
    if a.json:
        writable_file(a.json, "--json")        # before the evaluation, not after it
    model = nets.load(a.checkpoint)
    cfg = model.meta.get("config", {})
    dataset = ImageFolder(os.path.join(a.data, a.split), classes=cfg.get("classes"))
    mean, pixel_scale = model.input_normalization()
    result = evaluate(model, dataset, a.view, mean, batch=a.batch, workers=a.workers,
                      progress=not a.quiet, pixel_scale=pixel_scale)
    result.update({"checkpoint": os.path.abspath(a.checkpoint), "data": os.path.abspath(a.data),
                   "split": a.split, "skipped": len(result["skipped"])})
    views = f", {result['views_per_image']:.1f} views" if "views_per_image" in result else ""
    print(f"{a.view}: top-1 error {result['top1']:.2%}, top-5 error {result['top5']:.2%} "
          f"on {result['images']} images ({result['skipped']} skipped); "
          f"{result['seconds_per_image']:.3f} s per image{views}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0

def cmd_compare(a):
    from train.classify.compare import run_comparison
    seeds = tuple(ints(a.seeds, "--seeds"))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {a.seeds} names a seed twice (each seed is one run folder)")
    for value, flag in ((a.epochs, "--epochs"), (a.batch, "--batch"), (a.workers, "--workers")):
        at_least(value, 1, flag)
    if not a.lr > 0 or a.lr == float("inf"):
        raise ValueError(f"--lr must be a positive number, got {a.lr}")
    from nets import parse_spp
    pyramids = []
    for part in a.pyramids.split("/"):
        levels = parse_spp(part)
        if levels is None:
            raise ValueError(f"--pyramids {a.pyramids}: 'none' is not a pyramid (no SPP is "
                             f"always compared)")
        pyramids.append(levels)
    table = run_comparison(a.data, a.out, seeds=seeds, epochs=a.epochs, batch=a.batch, lr=a.lr,
                           workers=a.workers, progress=not a.quiet, pyramids=pyramids,
                           modes=tuple(a.modes.split(",")), table=a.table)
    print(table)
    return 0

def cmd_visualize(a):
    import nets

    from train.classify.visualize import visualize
    for value, flag in ((a.limit, "--limit"), (a.top, "--top"), (a.maps, "--maps")):
        at_least(value, 1, flag)
    at_least(a.scale, 32, "--scale")
    writable_file(a.out, "--out")
    filters = None if a.filters is None else ints(a.filters, "--filters")
    r = visualize(nets.load(a.checkpoint), a.images, a.out, layer=a.layer, filters=filters,
                  scale=a.scale, limit=a.limit, top=a.top, maps=a.maps)
    for f in r.filters:
        best = r.strongest[f][0]
        print(f"filter {f}: strongest {best.value:.3f} in {r.names[best.image]} at cell "
              f"(y, x) {best.cell}, receptive field x {best.box[0]:.0f}..{best.box[2]:.0f}, "
              f"y {best.box[1]:.0f}..{best.box[3]:.0f} (of the image at s={a.scale})")
    print(f"{a.out}: {len(r.filters)} filters of {a.layer} over {len(r.images)} images")
    return 0

def cmd_baselines(a):
    import warnings

    from train.classify.baselines import baseline_accuracies
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, acc in baseline_accuracies(a.data).items():
            print(f"{name}: top-1 error {1 - acc:.1%} (linear SVM)")
    return 0

def cmd_embedded(a):
    from minispp.data.embedded import make_classification, make_voc
    for flag in ("--train", "--val", "--trainval", "--test"):
        at_least(getattr(a, flag[2:]), 1, flag)
    if a.voc:
        root = make_voc(a.out, seed=a.seed, trainval=a.trainval, test=a.test)
    else:
        root = make_classification(a.out, seed=a.seed, train_per_class=a.train, val_per_class=a.val)
    print(f"embedded data set in {root}")
    return 0
