"""The paper's ZF-5 comparisons on one data set (Tables 2-3 in spirit): no-SPP vs SPP
single-size vs SPP multi-size, each tested with the center crop, the 10 views and the full
image (the no-SPP net has no full view), over several seeds. Writes a Markdown table with
the mean and spread (sample standard deviation) of the top-1 / top-5 errors."""
import json
import os

import numpy as np

import nets
from minispp.data.imagefolder import ImageFolder

from train.classify.trainer import BEST, Trainer
from train.classify.evaluate import evaluate

VARIANTS = (("no SPP, single-size", None, "single"),
            ("SPP, single-size", "spp", "single"),
            ("SPP, multi-size", "spp", "multi"))


def run_comparison(data, out, seeds=(0, 1), epochs=12, batch=16, lr=0.01, workers=2,
                   progress=True, net="zf5", levels=(6, 3, 2, 1)):
    """Train every variant for every seed (resuming finished or interrupted runs), test
    every view, write out/results.json and out/results.md; return the Markdown."""
    os.makedirs(out, exist_ok=True)
    val = None
    results = []
    for label, kind, mode in VARIANTS:
        spp = None if kind is None else tuple(levels)
        for seed in seeds:
            run_dir = os.path.join(out, f"{'nospp' if spp is None else 'spp'}-{mode}-seed{seed}")
            resume = os.path.exists(os.path.join(run_dir, "checkpoint.h5"))
            Trainer(data, run_dir, net=net, spp=spp, mode=mode, epochs=epochs, batch=batch,
                    lr=lr, seed=seed, workers=workers, resume=resume, progress=progress).run()
            done = os.path.join(run_dir, "views.json")
            stamp = os.path.getmtime(os.path.join(run_dir, BEST))
            if os.path.exists(done):                   # this best.h5 evaluated before: reuse
                with open(done) as f:
                    saved = json.load(f)
                if saved["best_mtime"] == stamp:
                    results.extend(saved["results"])
                    continue
            model = nets.load(os.path.join(run_dir, BEST))
            if val is None:
                val = ImageFolder(os.path.join(data, "val"), classes=model.meta["config"]["classes"])
            mean, pixel_scale = model.input_normalization()
            mine = []
            for view in ("center", "10view") + (("full",) if spp is not None else ()):
                r = evaluate(model, val, view, mean, batch=batch, workers=workers,
                             progress=progress, pixel_scale=pixel_scale)
                mine.append({"variant": label, "seed": seed, "view": view,
                             "top1": r["top1"], "top5": r["top5"]})
            with open(done + ".tmp", "w") as f:
                json.dump({"best_mtime": stamp, "results": mine}, f, indent=1)
            os.replace(done + ".tmp", done)
            results.extend(mine)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = markdown_table(results, seeds, epochs, f"{net}, SPP {','.join(map(str, levels))}")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    return table


def markdown_table(results, seeds, epochs, what="zf5"):
    """Rows: variants; columns: views; cells: mean top-1 / top-5 error ± spread, in %."""
    views = ("center", "10view", "full")
    lines = [f"{what}: validation error, top-1 / top-5 %, mean ± sample std over {len(seeds)} "
             f"seed(s) ({', '.join(map(str, seeds))}), {epochs} epochs each.", "",
             "| | center crop | 10 views | full image |", "|---|---|---|---|"]
    for label, _, _ in VARIANTS:
        cells = []
        for view in views:
            rs = [r for r in results if r["variant"] == label and r["view"] == view]
            if not rs:
                cells.append("n/a")
                continue
            t1 = 100 * np.array([r["top1"] for r in rs])
            t5 = 100 * np.array([r["top5"] for r in rs])
            sd = (lambda a: f" ± {a.std(ddof=1):.1f}" if len(a) > 1 else "")
            cells.append(f"{t1.mean():.1f}{sd(t1)} / {t5.mean():.1f}{sd(t5)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
