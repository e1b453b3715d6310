"""The paper's ZF-5 comparisons on one data set (Tables 2-3 in spirit): no-SPP vs SPP
single-size vs SPP multi-size, each tested with the center crop, the 10 views and the full
image (the no-SPP net has no full view), over several seeds. Writes a Markdown table with
the mean and spread (sample standard deviation) of the top-1 / top-5 errors.

Several pyramids can be compared in one table (Sec. 3.1.2: the 30-bin {4, 3, 2, 1} against
the 50-bin {6, 3, 2, 1} and no SPP, all single-size): one SPP variant per pyramid and
training mode. The run folders are named by variant and seed (nospp-single-seed0,
spp-single-seed0 for {6, 3, 2, 1}, spp4_3_2_1-single-seed0 for another pyramid), so tables
that share variants share their trainings."""
import json
import os

import numpy as np

import nets
from minispp.data.imagefolder import ImageFolder
from minispp.data.names import inside

from train.classify.trainer import BEST, Trainer
from train.classify.evaluate import evaluate

DEFAULT_LEVELS = (6, 3, 2, 1)
MODES = ("single", "multi", "random")
VARIANTS = (("no SPP, single-size", None, "single"),
            ("SPP, single-size", "spp", "single"),
            ("SPP, multi-size", "spp", "multi"))


def variants(pyramids=(DEFAULT_LEVELS,), modes=("single", "multi")):
    """[(label, levels or None, mode, run-folder stem)]: no SPP single-size, then every
    pyramid in every mode. With one pyramid the labels are VARIANTS'; with several they name
    the pyramid and its bin count."""
    pyramids = [tuple(int(n) for n in p) for p in pyramids]
    if not pyramids or len(set(pyramids)) != len(pyramids):
        raise ValueError(f"pyramids must be one or more distinct pyramids, got {pyramids}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown training mode {m!r}; expected some of {MODES}")
    if not modes or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be one or more distinct modes, got {list(modes)}")
    out = [("no SPP, single-size", None, "single", "nospp-single")]
    for levels in pyramids:
        name = "spp" if levels == DEFAULT_LEVELS else "spp" + "_".join(map(str, levels))
        for mode in modes:
            label = f"SPP, {mode}-size" if len(pyramids) == 1 else \
                f"SPP {{{','.join(map(str, levels))}}} ({sum(n * n for n in levels)} bins), {mode}-size"
            out.append((label, levels, mode, f"{name}-{mode}"))
    return out


def run_comparison(data, out, seeds=(0, 1), epochs=12, batch=16, lr=0.01, workers=2,
                   progress=True, net="zf5", levels=DEFAULT_LEVELS, pyramids=None,
                   modes=("single", "multi"), table="results"):
    """Train every variant for every seed (resuming finished or interrupted runs), test
    every view, write out/<table>.json and out/<table>.md; return the Markdown.
    pyramids: the SPP pyramids compared (default: (levels,)); modes: their training modes."""
    pyramids = (tuple(levels),) if pyramids is None else tuple(tuple(p) for p in pyramids)
    plan = variants(pyramids, modes)
    md, js = inside(out, table, ".md"), inside(out, table, ".json")     # checked before training
    os.makedirs(out, exist_ok=True)
    val = None
    results = []
    for label, spp, mode, stem in plan:
        for seed in seeds:
            run_dir = os.path.join(out, f"{stem}-seed{seed}")
            resume = os.path.exists(os.path.join(run_dir, "checkpoint.h5"))
            Trainer(data, run_dir, net=net, spp=spp, mode=mode, epochs=epochs, batch=batch,
                    lr=lr, seed=seed, workers=workers, resume=resume, progress=progress).run()
            done = os.path.join(run_dir, "views.json")
            stamp = os.path.getmtime(os.path.join(run_dir, BEST))
            if os.path.exists(done):                   # this best.h5 evaluated before: reuse
                with open(done) as f:
                    saved = json.load(f)
                if saved["best_mtime"] == stamp:
                    results.extend(dict(r, variant=label) for r in saved["results"])
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
    with open(js, "w") as f:
        json.dump(results, f, indent=1)
    what = f"{net}, SPP {' vs '.join(','.join(map(str, p)) for p in pyramids)}"
    text = markdown_table(results, seeds, epochs, what, [v[0] for v in plan])
    with open(md, "w") as f:
        f.write(text)
    return text


def markdown_table(results, seeds, epochs, what="zf5", labels=None):
    """Rows: variants (labels, in order; default VARIANTS'); columns: views; cells: mean
    top-1 / top-5 error ± spread, in %."""
    labels = [v[0] for v in VARIANTS] if labels is None else labels
    views = ("center", "10view", "full")
    lines = [f"{what}: validation error, top-1 / top-5 %, mean ± sample std over {len(seeds)} "
             f"seed(s) ({', '.join(map(str, seeds))}), {epochs} epochs each.", "",
             "| | center crop | 10 views | full image |", "|---|---|---|---|"]
    for label in labels:
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
