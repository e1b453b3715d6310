"""The minispp command line: `minispp COMMAND --help` for each command's options and examples.

    minispp embedded --out data/embedded
    minispp compare --data data/embedded --out runs/compare --seeds 0,1
    minispp train --data DIR --net zf5 --spp 6,3,2,1 --mode multi --epochs N --batch B --out OUTDIR [--resume]
    minispp test --checkpoint OUTDIR/checkpoint.h5 --data DIR --split val --view center|10view|full --json RESULT.json
"""
import minispp  # noqa: F401  (first: it sets OpenBLAS's thread timeout before NumPy loads)

import argparse
import json
import os
import sys

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
    "embedded": """examples:
  minispp embedded --out data/embedded                 # 10 classes, 120 train + 30 val images each
  minispp embedded --out /tmp/small --train 20 --val 5 --seed 3""",
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
    from minispp.embedded import make_classification
    root = make_classification(a.out, seed=a.seed, train_per_class=a.train, val_per_class=a.val)
    print(f"embedded data set in {root}")
    return 0


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    from .classify import TrainingStopped
    try:
        commands = {"train": cmd_train, "test": cmd_test, "compare": cmd_compare,
                    "baselines": cmd_baselines, "embedded": cmd_embedded}
        return commands[a.command](a)
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
