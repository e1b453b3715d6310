"""Fine-tuning the detector's fc layers (paper Sec. 4.1, "Fine-tuning"): fc6, fc7 and a new
(K+1)-way fc8 trained with SGD on pooled conv5 features of sampled windows; positives IoU
>= 0.5 with a ground-truth box, background [0.1, 0.5), 25% positives per mini-batch.

Memory: each image gives up to ft_pos_per_image + ft_neg_per_image sampled windows (256),
pooled from its cached conv5 maps into float16 vectors (25 KB each for ZF-5). A pool of at
most ``ft_cache_windows`` of them is held at once (default 20,000 windows, 512 MB for
ZF-5): when the sampled windows of all images fit, they are pooled once and every
mini-batch is drawn from them; when they do not, the images are split into groups whose
windows fit, and training visits the groups in turn (a new sample of windows at every
visit), each visit about one pass over its pool, until ft_iters mini-batches are done. So
the peak does not grow with the number of images (docs/design.md, "Memory").
"""

import numpy as np
from tqdm import tqdm

from minispp.solver import SGD
from train.detection.windows import pooled_windows


def image_groups(n_images, per_image, cap, rng):
    """The training images split into groups whose sampled windows fit the pool: [[image
    index, ...], ...], one group (in order) when all fit; else a seeded shuffle cut into
    groups of cap // per_image images."""
    per_group = max(1, int(cap) // max(int(per_image), 1))
    if n_images <= per_group:
        return [list(range(n_images))]
    order = rng.permutation(n_images)
    return [sorted(order[a:a + per_group].tolist()) for a in range(0, n_images, per_group)]


def sample_pool(det, images, conv, rng, progress=True, desc="pool windows for fine-tuning"):
    """Pooled float16 features and labels (0 background, c + 1 class c) of a fresh sample of
    each image's windows: up to ft_pos_per_image positives and ft_neg_per_image negatives."""
    cfg = det.config
    xs, ys = [], []
    for im in tqdm(images, desc=desc, unit="img", disable=not progress):
        ov, cls = im.max_overlap()
        pos = np.flatnonzero(ov >= cfg["pos_iou"])
        neg = np.flatnonzero((ov >= cfg["neg_iou_lo"]) & (ov < cfg["pos_iou"]))
        pos = rng.permutation(pos)[:cfg["ft_pos_per_image"]]
        neg = rng.permutation(neg)[:cfg["ft_neg_per_image"]]
        rows = np.concatenate([pos, neg])
        if rows.size == 0:
            continue
        xs.append(pooled_windows(det, conv, im, rows).astype(np.float16))
        ys.append(np.concatenate([cls[pos] + 1, np.zeros(len(neg), np.int64)]))
    if not xs:
        return np.zeros((0, det.pool_dim), np.float16), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def finetune(det, images, conv, log=print, progress=True, stats=None):
    """SGD on fc6, fc7, fc8 with pooled conv5 features of sampled windows, holding at most
    ft_cache_windows of them (the module's docstring). stats, a dict, gets "groups" and
    "peak_pool_windows". Returns the loss of every mini-batch."""
    cfg, rng = det.config, np.random.default_rng(det.config["seed"])
    per_image = cfg["ft_pos_per_image"] + cfg["ft_neg_per_image"]
    groups = image_groups(len(images), per_image, cfg["ft_cache_windows"], rng)
    B = cfg["ft_batch"]
    n_fg = max(1, int(round(cfg["ft_fg"] * B)))
    drop_at = int(cfg["ft_drop_at"] * cfg["ft_iters"])
    history, peak, visit, total_fg, total_bg = [], 0, 0, 0, 0
    net = solver = None
    bar = tqdm(total=cfg["ft_iters"], desc="fine-tune fc6-fc8", unit="batch", disable=not progress)
    while len(history) < cfg["ft_iters"]:
        group = groups[visit % len(groups)]
        desc = ("pool windows for fine-tuning" if len(groups) == 1 else
                f"pool windows for fine-tuning (group {visit % len(groups) + 1}/{len(groups)})")
        x, y = sample_pool(det, [images[i] for i in group], conv, rng, progress and visit < len(groups), desc)
        visit += 1
        fg, bg = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
        peak = max(peak, len(y))
        if visit <= len(groups):
            total_fg, total_bg = total_fg + fg.size, total_bg + bg.size
        if fg.size == 0 or bg.size == 0:
            if len(groups) == 1 or (visit > 2 * len(groups) and not history):
                raise ValueError(f"fine-tuning needs positive and negative windows; found "
                                 f"{total_fg} positives and {total_bg} negatives")
            continue
        if net is None:
            det.init_head_from_model()
            net = det.head(B)
            solver = SGD(det.head_params, lr=cfg["ft_lr"], momentum=0.9, weight_decay=5e-4)
        # one group: every mini-batch from its pool; several: about one pass over this pool
        steps = cfg["ft_iters"] - len(history)
        if len(groups) > 1:
            steps = min(steps, max(1, len(y) // B))
        for _ in range(steps):
            it = len(history)
            if it == drop_at:
                solver.lr = cfg["ft_lr"] / 10
            idx = np.concatenate([rng.choice(fg, n_fg), rng.choice(bg, B - n_fg)])
            det.head_params.zero_grad()
            loss = net.loss(x[idx].astype(np.float32), y[idx], train=True)
            net.backward()
            solver.step()
            history.append(loss)
            bar.update(1)
            if it % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}", lr=solver.lr)
        del x, y
    bar.close()
    if stats is not None:
        stats.update(groups=len(groups), peak_pool_windows=int(peak))
    log(f"fine-tuned {cfg['ft_iters']} mini-batches of {B} ({n_fg} positive) on {total_fg} "
        f"positive and {total_bg} negative windows"
        + (f" in {len(groups)} groups of images (at most {peak} windows held at once)"
           if len(groups) > 1 else "")
        + f"; loss {np.mean(history[:20]):.3f} -> {np.mean(history[-20:]):.3f}")
    return history
