"""The SPP-net detector (paper Sec. 4): training and testing on a VOC devkit.

Training (``train_detector``), on a split's images and their non-difficult objects:
  1. proposals per image (selective search, cached), plus the ground-truth boxes;
  2. conv5 once per image and scale (cached), windows pooled with {6, 3, 2, 1};
  3. fine-tune fc6, fc7 and a new (K+1)-way fc8 (Gaussian std 0.01) on the pooled features:
     positives IoU >= 0.5 with a ground-truth box (labelled with its class), negatives IoU
     in [0.1, 0.5) (background), 25% positives per mini-batch; fc6/fc7 start from the
     classification net; the paper's 250k + 50k iterations at 1e-4 / 1e-5 are flags here,
     scaled to the data set;
  4. one linear SVM per class on the fine-tuned fc7 features (or pool5): positives are the
     ground-truth boxes of the class; negatives are proposals with IoU <= 0.3 with every
     box of the class, minus any negative overlapping an earlier (better-ranked) negative
     by more than 0.7; hard negative mining: train on a random cache of negatives, add every
     negative scoring above -1 (inside the margin), train again (``hard_rounds`` times);
  5. bounding-box regression per class (R-CNN's parameterization, ridge regression with
     lambda = 1000) on the pooled conv5 features of proposals with IoU >= 0.5.
Testing (``detect``): score every proposal with the SVMs (or fc8's softmax), regress its box
per class, non-maximum suppression at IoU 0.3 per class, the top ``max_per_image``.

Boxes are 0-based inclusive pixels (x1, y1, x2, y2), as in minispp.boxes.
"""
import json
import os
import time
import warnings

import h5py
import numpy as np
from tqdm import tqdm

import nets
from layers import FC, ReLU, SoftmaxLoss
from layers.softmax_loss import softmax
from minispp import Net, Params
from minispp.boxes import apply_regression, clip, iou, nms, regression_targets
from minispp.checkpoint import atomic_h5
from minispp.geometry import spp_output_length
from minispp.proposals import ProposalCache
from minispp.solver import SGD
from minispp.voc import VOCDataset
from nets.specs import Spec

from .det_features import FIVE_SCALES, SINGLE_SCALE, WindowPooler, scale_caches, scales_key

FORMAT = "minispp-detector-2"
SCORER_PARTS = ("svm_w", "svm_b", "bbox_w", "bbox_b")
PAPER_SVM_C, PAPER_TRAIN_IMAGES = 0.001, 5011      # R-CNN's / SPP-net's C on VOC07 trainval



def svm_C_for(n_images):
    """The SVM C that keeps the paper's balance of hinge loss and regularization on n_images
    training images: the loss term sums over the data, so C = 0.001 x 5011 / n (0.05 for 100
    images; on the embedded set 0.01-0.1 all give about the same mAP, 0.001 about 8 points less)."""
    return PAPER_SVM_C * PAPER_TRAIN_IMAGES / max(int(n_images), 1)


DEFAULTS = dict(
    scales=SINGLE_SCALE, svm_scales=(SINGLE_SCALE, FIVE_SCALES), proposals=2000, seed=0,
    ft_iters=600, ft_lr=1e-3, ft_drop_at=0.8, ft_batch=128, ft_fg=0.25,
    ft_pos_per_image=64, ft_neg_per_image=192, pos_iou=0.5, neg_iou_lo=0.1,
    svm_feature="fc7", svm_C=None, svm_pos_weight=2.0, svm_neg_iou=0.3, svm_neg_neg=0.7,
    hard_rounds=1, hard_threshold=-1.0, svm_init_negatives=4000, feature_norm=20.0,
    bbox_iou=0.5, bbox_lambda=1000.0, nms=0.3, max_per_image=100)


class ImageWindows:
    """One training or test image: its id, size, non-difficult ground truth (boxes,
    classes), proposals, and windows = ground truth followed by proposals with their
    overlap (R, K) with the ground truth of each class."""

    def __init__(self, image_id, hw, gt_boxes, gt_classes, proposals, num_classes):
        self.id, self.hw = image_id, tuple(hw)
        self.gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        self.gt_classes = np.asarray(gt_classes, dtype=np.int64)
        self.proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
        self.windows = np.concatenate([self.gt_boxes, self.proposals])
        self.is_gt = np.arange(len(self.windows)) < len(self.gt_boxes)
        ov = iou(self.windows, self.gt_boxes) if len(self.gt_boxes) else np.zeros((len(self.windows), 0))
        self.overlap = np.zeros((len(self.windows), num_classes))
        self.match = np.full((len(self.windows), num_classes), -1, dtype=np.int64)
        for c in range(num_classes):
            cols = np.flatnonzero(self.gt_classes == c)
            if cols.size:
                best = ov[:, cols].argmax(axis=1)
                self.overlap[:, c] = ov[np.arange(len(ov)), cols[best]]
                self.match[:, c] = cols[best]

    def max_overlap(self):
        """(R,) best IoU with any ground truth box, and (R,) its class."""
        if self.overlap.shape[1] == 0:
            return np.zeros(len(self.windows)), np.zeros(len(self.windows), dtype=np.int64)
        return self.overlap.max(axis=1), self.overlap.argmax(axis=1)


def head_specs(model, num_outputs):
    """The base net's layers after pool5 (fc6, fc7 with ReLU and dropout for ZF-5) with its
    last fc replaced by the detector's (K + 1)-way one, Gaussian std 0.01."""
    after = model.specs[model.trunk_length + 1:]
    last = after[-1]
    if not last.is_a(FC):
        raise ValueError(f"{model.definition} does not end with an fc layer")
    return after[:-1] + [Spec(last.name, FC, out_features=num_outputs, std=0.01)]


class Detector:
    """The parts a trained detector is made of: the base model (conv trunk), the fine-tuned
    head (fc6, fc7, fc8 in their own Params), the per-class SVMs and box regressors."""

    def __init__(self, model, classes, config, rng=None):
        self.model, self.classes, self.config = model, list(classes), dict(DEFAULTS, **config)
        self.rng = rng if rng is not None else np.random.default_rng(self.config["seed"])
        self.mean, self.pixel_scale = model.input_normalization()
        if model.spp is None:
            raise ValueError("the detector pools windows with the net's SPP layer; this net has none")
        self.pooler = WindowPooler(model, model.spp)            # {6, 3, 2, 1} for ZF-5
        self.pool_dim = spp_output_length(model.spp, model.trunk_channels)
        self.specs = head_specs(model, len(self.classes) + 1)
        self.hidden = [sp.name for sp in self.specs[:-1] if sp.is_a(FC)]     # fc6, fc7
        self.feature_layer = [sp.name for sp in self.specs if sp.is_a(ReLU)][-1]  # relu7
        self.head_params = Params(np.float32)
        self._heads = {}
        self.head(1)                                           # creates fc6, fc7, fc8
        self.feature_dim = self.head_params[f"{self.hidden[-1]}.W"].value.shape[0]
        self.svm_w = self.svm_b = self.bbox_w = self.bbox_b = None
        self.svm_scale = self.bbox_scale = 1.0
        self.scorers = {}            # scales_key -> the SVMs and box regressors for those scales

    # -- SVMs and box regressors for each set of test scales --------------------------------------
    def keep_scorer(self, scales):
        """Store the current SVMs and box regressors as the ones trained at these scales."""
        self.scorers[scales_key(scales)] = {
            **{k: getattr(self, k) for k in SCORER_PARTS},
            "svm_scale": self.svm_scale, "bbox_scale": self.bbox_scale}

    def use_scales(self, scales, warn=print):
        """Score with the SVMs and box regressors trained on features at these scales (a
        window's features differ with the scale it is pooled at); another set's when none
        were, with a warning. Returns the key of the set in use."""
        key = scales_key(scales)
        if key not in self.scorers:
            if not self.scorers:
                return None
            fallback = scales_key(self.config["scales"])
            fallback = fallback if fallback in self.scorers else next(iter(self.scorers))
            warn(f"warning: the SVMs and box regressors were trained at scales "
                 f"{' and '.join(self.scorers)}, not {key}: using those of {fallback} "
                 f"(train with --svm-scales including {key})")
            key = fallback
        for k, v in self.scorers[key].items():
            setattr(self, k, v)
        return key

    def head(self, batch):
        """The fc6-fc7-fc8 Net (with a softmax loss) for (batch, pool_dim) input."""
        if batch not in self._heads:
            net = Net([s.make() for s in self.specs], loss=SoftmaxLoss(),
                      name=f"detector-head@{batch}")
            net.setup((batch, self.pool_dim), self.head_params, self.rng)
            self._heads[batch] = net
        return self._heads[batch]

    def init_head_from_model(self):
        """fc6 and fc7 start from the classification net's."""
        for layer in self.hidden:
            for part in ("W", "b"):
                self.head_params[f"{layer}.{part}"].value[...] = self.model.params[f"{layer}.{part}"].value

    def fc7(self, pooled, batch=256):
        """(R, 4096) fc7 features (after ReLU, dropout off) of pooled conv5 features."""
        out = np.empty((len(pooled), self.feature_dim), dtype=np.float32)
        net = self.head(batch)
        for a in range(0, len(pooled), batch):
            h = np.ascontiguousarray(pooled[a:a + batch], dtype=np.float32)
            out[a:a + batch] = net.forward(h, until=self.feature_layer)
        return out

    def softmax_scores(self, pooled, batch=256):
        """(R, K + 1) class probabilities from fc8."""
        net = self.head(batch)
        out = []
        for a in range(0, len(pooled), batch):
            s = net.forward(np.ascontiguousarray(pooled[a:a + batch], dtype=np.float32), train=False)
            out.append(softmax(s))
        return np.concatenate(out)

    def svm_features(self, pooled):
        feats = self.fc7(pooled) if self.config["svm_feature"] == "fc7" else pooled
        return feats.astype(np.float32) * np.float32(self.svm_scale)

    # -- saving ---------------------------------------------------------------------------------
    def config_json(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.items()}

    def save(self, path, extra_meta=None):
        meta = {"classes": self.classes, "config": self.config_json(),
                "scorers": {k: {"svm_scale": v["svm_scale"], "bbox_scale": v["bbox_scale"]}
                            for k, v in self.scorers.items()},
                "base_checkpoint": self.model.checksum, "definition": self.model.definition,
                "definition_args": self.model._args_json(), **(extra_meta or {})}

        def write(f):
            f.attrs["format"] = FORMAT
            f.attrs["meta"] = json.dumps(meta)
            for p in self.model.params:
                f[f"base/{p.name}"] = p.value
            for p in self.head_params:
                f[f"head/{p.name}"] = p.value
            for k, v in self.model.extras.items():
                f[f"extras/{k}"] = v
            for key, parts in self.scorers.items():
                for name in SCORER_PARTS:
                    if parts[name] is not None:
                        f[f"scorers/{key}/{name}"] = parts[name]
        atomic_h5(path, write)


def load_detector(path):
    """A Detector saved by Detector.save (base net, head, SVMs, box regressors)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "detector.h5")
    if not os.path.exists(path):
        raise ValueError(f"no detector at {path}; train one with `minispp detect-train`")
    with h5py.File(path, "r") as f:
        old = f.attrs.get("format") == "minispp-detector-1"      # one scorer, at the training scales
        if f.attrs.get("format") != FORMAT and not old:
            raise ValueError(f"{path} is not a minispp detector of this version (format "
                             f"{f.attrs.get('format')!r}, expected {FORMAT!r}); train it again")
        meta = json.loads(f.attrs["meta"])
        args = dict(meta["definition_args"])
        if args.get("spp") is not None:
            args["spp"] = tuple(args["spp"])
        model = nets.Model(meta["definition"], args)
        for p in model.params:
            p.value[...] = f[f"base/{p.name}"][...]
        model.extras = {k: f[f"extras/{k}"][...] for k in f["extras"]}
        model.meta = {"config": {"mean": meta["config"].get("mean", "image")}}
        model.checksum = meta["base_checkpoint"]
        config = dict(meta["config"])
        config["scales"] = tuple(config["scales"])
        config["svm_scales"] = tuple(tuple(v) for v in config.get("svm_scales", [config["scales"]]))
        det = Detector(model, meta["classes"], config)
        for p in det.head_params:
            p.value[...] = f[f"head/{p.name}"][...]
        if old:
            meta["scorers"] = {scales_key(config["scales"]): {"svm_scale": meta["svm_scale"],
                                                              "bbox_scale": meta["bbox_scale"]}}
        for key, scales in meta["scorers"].items():
            where = "" if old else f"scorers/{key}/"
            det.scorers[key] = {name: f[where + name][...] if where + name in f else None
                                for name in SCORER_PARTS}
            det.scorers[key].update(scales)
        det.meta = meta
    det.use_scales(det.config["scales"])
    return det


# ---- data ---------------------------------------------------------------------------------------

def image_windows(ds, i, proposals, num_classes, keep_difficult=False):
    boxes, cls, diff = ds.object_boxes(i)
    keep = np.ones(len(boxes), bool) if keep_difficult else ~diff
    ann = ds.annotation(i)
    return ImageWindows(ds.ids[i], (ann["height"], ann["width"]), boxes[keep], cls[keep],
                        proposals, num_classes)


def prepare_images(ds, workdir, det, progress=True, limit=None, precomputed=None):
    """Proposals and conv5 maps for every image of a split (both cached under workdir);
    returns ([ImageWindows], ConvCache)."""
    props = ProposalCache(os.path.join(workdir, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"], precomputed=precomputed)
    conv = scale_caches(workdir, det.model, det.config["scales"], det.mean, det.pixel_scale)
    n = len(ds) if limit is None else min(limit, len(ds))
    with tqdm(total=n, desc=f"proposals ({ds.split})", unit="img", disable=not progress) as bar:
        props.fill(ds.ids[:n], [ds.image_path(i) for i in range(n)], progress=bar.update)
    images = []
    for i in tqdm(range(n), desc=f"conv5 ({ds.split})", unit="img", disable=not progress):
        load = (lambda i=i: ds.load(i)[0])
        p = props.get(ds.ids[i], load)
        images.append(image_windows(ds, i, p, len(det.classes)))
        if not conv.has(ds.ids[i]):
            conv.get(ds.ids[i], load)
    return images, conv


def pooled_windows(det, conv, image, rows):
    """Pooled conv5 features (len(rows), D) of some of an image's windows (maps from the cache)."""
    maps, hw = conv.get(image.id, lambda: None)
    return det.pooler(maps, image.windows[rows], hw)


# ---- 3. fine-tuning ------------------------------------------------------------------------------

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


# ---- 4. SVMs with hard negatives ------------------------------------------------------------------

def svm_negatives(image, c, neg_iou=0.3, neg_neg=0.7):
    """Rows of image.windows that are negatives for class c: proposals with IoU <= neg_iou
    with every ground-truth box of c, dropping any that overlaps an earlier kept negative by
    more than neg_neg (proposals are in rank order)."""
    cand = np.flatnonzero(~image.is_gt & (image.overlap[:, c] <= neg_iou))
    if cand.size == 0:
        return cand
    keep = nms(image.windows[cand], -np.arange(len(cand), dtype=np.float64), neg_neg)
    return np.sort(cand[keep])


def _fit_svm(x, y, C, pos_weight):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = LinearSVC(C=C, loss="hinge", dual=True, class_weight={1: pos_weight, 0: 1.0},
                      intercept_scaling=10.0, max_iter=20000, random_state=0).fit(x, y)
    return m.coef_[0].astype(np.float32), np.float32(m.intercept_[0])


def train_svms(det, images, conv, log=print, progress=True):
    """One linear SVM per class with hard negative mining; sets det.svm_w (K, D), svm_b."""
    cfg, rng = det.config, np.random.default_rng(det.config["seed"] + 1)
    K = len(det.classes)
    feats = []
    for im in tqdm(images, desc=f"{cfg['svm_feature']} features for the SVMs", unit="img",
                   disable=not progress):
        maps, hw = conv.get(im.id, lambda: None)
        pooled, inverse = det.pooler.unique(maps, im.windows, hw)
        f = det.fc7(pooled) if cfg["svm_feature"] == "fc7" else pooled
        feats.append(f.astype(np.float16)[inverse])
    norms = [np.linalg.norm(f.astype(np.float32), axis=1).mean() for f in feats if len(f)]
    det.svm_scale = float(cfg["feature_norm"] / max(np.mean(norms), 1e-6))
    D = feats[0].shape[1]
    W, b = np.zeros((K, D), np.float32), np.zeros(K, np.float32)
    for c in range(K):
        pos = np.concatenate([f[:len(im.gt_boxes)][im.gt_classes == c]      # ground truth rows
                              for f, im in zip(feats, images)]).astype(np.float32) * det.svm_scale
        negs = [(j, svm_negatives(im, c, cfg["svm_neg_iou"], cfg["svm_neg_neg"])) for j, im in enumerate(images)]
        neg_index = np.array([(j, r) for j, rows in negs for r in rows], dtype=np.int64).reshape(-1, 2)
        if len(pos) == 0 or len(neg_index) == 0:
            log(f"  {det.classes[c]}: {len(pos)} positives, {len(neg_index)} negatives: no SVM")
            W[c], b[c] = 0, -1e3
            continue
        cache = rng.permutation(len(neg_index))[:cfg["svm_init_negatives"]]

        def neg_feats(sel):
            return np.stack([feats[j][r] for j, r in neg_index[sel]]).astype(np.float32) * det.svm_scale
        for rnd in range(cfg["hard_rounds"] + 1):
            xn = neg_feats(cache)
            x = np.concatenate([pos, xn])
            y = np.concatenate([np.ones(len(pos)), np.zeros(len(xn))]).astype(np.int64)
            W[c], b[c] = _fit_svm(x, y, cfg["svm_C"], cfg["svm_pos_weight"])
            if rnd == cfg["hard_rounds"]:
                break
            scores = np.concatenate([neg_feats(np.arange(a, min(a + 4096, len(neg_index)))) @ W[c] + b[c]
                                     for a in range(0, len(neg_index), 4096)])
            hard = np.setdiff1d(np.flatnonzero(scores > cfg["hard_threshold"]), cache)
            log(f"  {det.classes[c]}: round {rnd + 1}: {len(hard)} hard negatives added to "
                f"{len(cache)} (of {len(neg_index)})")
            if hard.size == 0:
                break
            cache = np.concatenate([cache, hard])
    det.svm_w, det.svm_b = W, b
    return W, b


# ---- 5. box regression --------------------------------------------------------------------------

def train_box_regressors(det, images, conv, log=print, progress=True):
    """Per class, ridge regression from pooled conv5 features to R-CNN's box targets on
    proposals with IoU >= bbox_iou with a box of that class."""
    from sklearn.linear_model import Ridge
    cfg, K = det.config, len(det.classes)
    xs, ts, cs = [], [], []
    for im in tqdm(images, desc="pool5 features for box regression", unit="img", disable=not progress):
        if len(im.gt_boxes) == 0:
            continue
        ov, cls = im.max_overlap()
        rows = np.flatnonzero(~im.is_gt & (ov >= cfg["bbox_iou"]))
        if rows.size == 0:
            continue
        maps, hw = conv.get(im.id, lambda: None)
        xs.append(det.pooler(maps, im.windows[rows], hw).astype(np.float16))
        gt = im.gt_boxes[im.match[rows, cls[rows]]]
        ts.append(regression_targets(im.windows[rows], gt))
        cs.append(cls[rows])
    D = det.pool_dim
    det.bbox_w, det.bbox_b = np.zeros((K, 4, D), np.float32), np.zeros((K, 4), np.float32)
    if not xs:
        log("box regression: no proposal overlaps a ground-truth box by the threshold")
        return
    x, t, cl = np.concatenate(xs), np.concatenate(ts), np.concatenate(cs)
    det.bbox_scale = float(cfg["feature_norm"] / max(np.linalg.norm(x[:2000].astype(np.float32), axis=1).mean(), 1e-6))
    for c in range(K):
        sel = np.flatnonzero(cl == c)
        if sel.size < 2:
            continue
        r = Ridge(alpha=cfg["bbox_lambda"]).fit(x[sel].astype(np.float32) * det.bbox_scale, t[sel])
        det.bbox_w[c], det.bbox_b[c] = r.coef_, r.intercept_
    log(f"box regressors trained on {len(x)} proposals (IoU >= {cfg['bbox_iou']})")


def train_detector(voc, checkpoint, out, split="trainval", limit=None, progress=True,
                   precomputed=None, **config):
    """The whole training; writes out/detector.h5 and out/train_log.json; returns the Detector."""
    os.makedirs(out, exist_ok=True)
    model = nets.load(checkpoint)
    if model.spp is None:
        raise ValueError(f"{checkpoint} is a no-SPP net; the detector pools windows with SPP: "
                         f"train with --spp 6,3,2,1")
    ds = VOCDataset(voc, split)
    det = Detector(model, ds.classes, config)
    lines = []

    def log(msg):
        lines.append(msg)
        print(msg)
    t0 = time.perf_counter()
    images, conv = prepare_images(ds, out, det, progress, limit, precomputed)
    times = {"proposals_and_conv5": time.perf_counter() - t0}
    if det.config["svm_C"] is None:
        det.config["svm_C"] = svm_C_for(len(images))
        log(f"SVM C = 0.001 x 5011 / {len(images)} images = {det.config['svm_C']:.4g}")
    t = time.perf_counter()
    finetune(det, images, conv, log, progress)
    times["finetune"] = time.perf_counter() - t
    times["svms"] = times["bbox"] = 0.0
    index = {image_id: i for i, image_id in enumerate(ds.ids)}
    for scales in det.config["svm_scales"]:          # SVMs and regressors for each test scale set
        t = time.perf_counter()
        maps = scale_caches(out, model, scales, det.mean, det.pixel_scale)
        for im in tqdm(images, desc=f"conv5 at {scales_key(scales)}", unit="img", disable=not progress):
            if not maps.has(im.id):
                maps.get(im.id, lambda i=index[im.id]: ds.load(i)[0])
        times[f"conv5 {scales_key(scales)}"] = time.perf_counter() - t
        log(f"SVMs and box regressors on features at {scales_key(scales)}:")
        t = time.perf_counter()
        train_svms(det, images, maps, log, progress)
        times["svms"] += time.perf_counter() - t
        t = time.perf_counter()
        train_box_regressors(det, images, maps, log, progress)
        times["bbox"] += time.perf_counter() - t
        det.keep_scorer(scales)
    det.save(os.path.join(out, "detector.h5"), {"train_split": split, "voc": os.path.abspath(voc),
                                                "train_images": len(images)})
    with open(os.path.join(out, "train_log.json"), "w") as fh:
        json.dump({"log": lines, "seconds": times,
                   "config": det.config_json()},
                  fh, indent=1)
    return det


# ---- testing ---------------------------------------------------------------------------------------

def score_windows(det, maps, hw, boxes, scorer="svm", bbox=True):
    """(scores (R, K), boxes (R, K, 4)) for proposals of one image. Windows that project onto
    the same conv5 cells share their features, so the fc layers run once per distinct one."""
    pooled, inverse = det.pooler.unique(maps, boxes, hw)
    if scorer == "svm":
        scores = det.svm_features(pooled) @ det.svm_w.T + det.svm_b
    elif scorer == "softmax":
        scores = det.softmax_scores(pooled)[:, 1:]
    elif scorer == "random":          # the chance baseline: same windows, scores drawn at random
        key = int(np.asarray(boxes, np.float64).sum() * 16) % (2 ** 31)
        scores = np.random.default_rng([det.config["seed"], len(boxes), key]).random((len(pooled), len(det.classes)))
    else:
        raise ValueError(f"scorer must be svm, softmax or random, got {scorer!r}")
    scores = scores[inverse]
    K = len(det.classes)
    out = np.repeat(np.asarray(boxes, np.float64)[:, None, :], K, axis=1)
    if bbox and det.bbox_w is not None:
        px = pooled.astype(np.float32) * np.float32(det.bbox_scale)
        for c in range(K):
            d = (px @ det.bbox_w[c].T + det.bbox_b[c])[inverse]
            out[:, c] = clip(apply_regression(boxes, d), hw[0], hw[1])
    return scores, out


def localization(proposals, regressed, gt_boxes, gt_classes, band=(0.5, 0.9)):
    """What box regression does to imperfect windows: for each proposal whose best IoU with a
    ground-truth box lies in band, (IoU before, IoU after regressing it with that box's class's
    regressor). regressed: (R, K, 4) from score_windows."""
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return np.zeros(0), np.zeros(0)
    ov = iou(proposals, gt_boxes)
    j, best = ov.argmax(axis=1), ov.max(axis=1)
    rows = np.flatnonzero((best >= band[0]) & (best < band[1]))
    c = np.asarray(gt_classes)[j[rows]]
    after = iou(regressed[rows, c], gt_boxes)[np.arange(rows.size), j[rows]]
    return best[rows], after


def detections_from_scores(scores, boxes, nms_thresh=0.3, max_per_image=100):
    """Per class: NMS at nms_thresh, at most max_per_image kept. {class: (boxes, scores)}."""
    out = {}
    for c in range(scores.shape[1]):
        keep = nms(boxes[:, c], scores[:, c], nms_thresh)[:max_per_image]
        out[c] = (boxes[keep, c], scores[keep, c])
    return out


def combine(dets, nms_thresh=0.3, max_per_image=100):
    """Model combination: the union of several detectors' detections of one image, NMS."""
    out = {}
    for c in dets[0]:
        b = np.concatenate([d[c][0] for d in dets])
        s = np.concatenate([d[c][1] for d in dets])
        keep = nms(b, s, nms_thresh)[:max_per_image]
        out[c] = (b[keep], s[keep])
    return out


def evaluate_detector(det, voc, split="test", workdir=None, scales=None, scorer="svm",
                      limit=None, progress=True, others=()):
    """Detect on every image of a split and compute VOC07 AP per class, with and without box
    regression. others: more Detectors for model combination (their detections are pooled
    with this one's before the final NMS). Returns a result dict."""
    from .voc_eval import detection_ap
    ds = VOCDataset(voc, split)
    if ds.classes != det.classes:
        raise ValueError(f"{voc} {split} has classes {ds.classes}, the detector {det.classes}")
    for k, other in enumerate(others, 1):
        if other.classes != det.classes:
            raise ValueError(f"combined detector {k} has the classes {other.classes}, the first "
                             f"{det.classes}: model combination needs the same classes in order")
    scales = tuple(scales or det.config["scales"])
    workdir = workdir or "."
    props = ProposalCache(os.path.join(workdir, "proposals"), seed=det.config["seed"],
                          top=det.config["proposals"])
    convs = [scale_caches(workdir, d.model, scales, d.mean, d.pixel_scale, "" if k == 0 else f"-m{k}")
             for k, d in enumerate((det,) + tuple(others))]
    used = [d.use_scales(scales) for d in (det,) + tuple(others)]
    n = len(ds) if limit is None else min(limit, len(ds))
    with tqdm(total=n, desc=f"proposals ({split})", unit="img", disable=not progress) as bar:
        props.fill(ds.ids[:n], [ds.image_path(i) for i in range(n)], progress=bar.update)
    K = len(det.classes)
    found = {True: [[] for _ in range(K)], False: [[] for _ in range(K)]}
    gt = [{} for _ in range(K)]
    t_total, moved = 0.0, []
    for i in tqdm(range(n), desc=f"detect ({split}, scales {','.join(map(str, scales))})", unit="img",
                  disable=not progress):
        load = (lambda i=i: ds.load(i)[0])
        boxes, cls, diff = ds.object_boxes(i)
        for c in range(K):
            gt[c][ds.ids[i]] = (boxes[cls == c], diff[cls == c])
        p = props.get(ds.ids[i], load)
        t0 = time.perf_counter()
        scored = []                       # per model: (scores, regressed boxes, plain boxes)
        for d, conv in zip((det,) + tuple(others), convs):
            maps, hw = conv.get(ds.ids[i], load)
            scores, b = score_windows(d, maps, hw, p, scorer, bbox=True)
            scored.append((d, scores, b, np.repeat(np.asarray(p, np.float64)[:, None], K, axis=1)))
        moved.append(localization(p, scored[0][2], boxes[~diff], cls[~diff]))
        for use_bbox in (True, False):
            per_model = [detections_from_scores(sc, rb if use_bbox else pb, d.config["nms"],
                                                d.config["max_per_image"]) for d, sc, rb, pb in scored]
            dets = per_model[0] if len(per_model) == 1 else combine(per_model, det.config["nms"],
                                                                     det.config["max_per_image"])
            for c, (bb, ss) in dets.items():
                found[use_bbox][c].append((ds.ids[i], bb, ss))
        t_total += time.perf_counter() - t0
    result = {"split": split, "images": n, "scales": list(scales), "scorer": scorer,
              "models": 1 + len(others), "svms_trained_at": used,
              "seconds_per_image_scoring": t_total / max(n, 1)}
    before, after = (np.concatenate([m[k] for m in moved]) for k in (0, 1))
    result["localization"] = {"windows": int(before.size),
                              "mean_iou_before": float(before.mean()) if before.size else float("nan"),
                              "mean_iou_after": float(after.mean()) if after.size else float("nan")}
    for use_bbox in (True, False):
        aps = {}
        for c in range(K):
            ids = [k for k, bb, _ in found[use_bbox][c] for _ in range(len(bb))]
            if not any((~d).any() for _, d in gt[c].values()):
                continue
            bb = np.concatenate([bb for _, bb, _ in found[use_bbox][c]]) if ids else np.zeros((0, 4))
            ss = np.concatenate([ss for _, _, ss in found[use_bbox][c]]) if ids else np.zeros(0)
            aps[det.classes[c]] = detection_ap(ids, ss, bb, gt[c])[0]
        key = "bbox" if use_bbox else "no_bbox"
        result[key] = {"per_class": aps, "mAP": float(np.mean(list(aps.values()))) if aps else float("nan")}
    return result
