"""Fine-tuning the detector's fc layers (paper Sec. 4.1, "Fine-tuning"): fc6, fc7 and a new
(K+1)-way fc8 trained with SGD on pooled conv5 features of sampled windows; positives IoU
>= 0.5 with a ground-truth box, background [0.1, 0.5), 25% positives per mini-batch."""

import numpy as np
from tqdm import tqdm

from minispp.solver import SGD
from train.detection.windows import pooled_windows


def finetune(det, images, conv, log=print, progress=True):
    """SGD on fc6, fc7, fc8 with pooled conv5 features of sampled windows."""
    cfg, rng = det.config, np.random.default_rng(det.config["seed"])
    K = len(det.classes)
    xs, ys = [], []
    for im in tqdm(images, desc="pool windows for fine-tuning", unit="img", disable=not progress):
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
    x, y = np.concatenate(xs), np.concatenate(ys)
    fg, bg = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
    if fg.size == 0 or bg.size == 0:
        raise ValueError(f"fine-tuning needs positive and negative windows; found {fg.size} "
                         f"positives and {bg.size} negatives")
    det.init_head_from_model()
    B = cfg["ft_batch"]
    n_fg = max(1, int(round(cfg["ft_fg"] * B)))
    net = det.head(B)
    solver = SGD(det.head_params, lr=cfg["ft_lr"], momentum=0.9, weight_decay=5e-4)
    drop_at = int(cfg["ft_drop_at"] * cfg["ft_iters"])
    history = []
    bar = tqdm(range(cfg["ft_iters"]), desc="fine-tune fc6-fc8", unit="batch", disable=not progress)
    for it in bar:
        if it == drop_at:
            solver.lr = cfg["ft_lr"] / 10
        idx = np.concatenate([rng.choice(fg, n_fg), rng.choice(bg, B - n_fg)])
        det.head_params.zero_grad()
        loss = net.loss(x[idx].astype(np.float32), y[idx], train=True)
        net.backward()
        solver.step()
        history.append(loss)
        if it % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}", lr=solver.lr)
    log(f"fine-tuned {cfg['ft_iters']} mini-batches of {B} ({n_fg} positive) on {len(fg)} "
        f"positive and {len(bg)} negative windows; loss {np.mean(history[:20]):.3f} -> "
        f"{np.mean(history[-20:]):.3f}")
    return history
