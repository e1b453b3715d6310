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

Boxes are 0-based inclusive pixels (x1, y1, x2, y2), as in minispp.detection.boxes.
"""
import json
import os
import time

import h5py
import numpy as np
from tqdm import tqdm

import nets
from layers import FC, ReLU, SoftmaxLoss
from layers.softmax_loss import softmax
from minispp import Net, Params, distributed
from minispp.backend import to_device
from minispp.data.voc import VOCDataset
from minispp.geometry import spp_output_length
from nets.specs import Spec
from train.detection.calibration import calibrate_svms
from train.detection.finetune import finetune
from train.resources import peak_rss_mb, return_free_memory
from train.detection.svms import train_box_regressors, train_svms
from train.detection.windows import (
    FIVE_SCALES,
    SINGLE_SCALE,
    WindowPooler,
    prepare_images,
    scale_caches,
    scales_key,
)

SCORER_PARTS = ("svm_w", "svm_b", "svm_calib", "svm_oof_images", "svm_oof_dets", "svm_oof_gt",
                "bbox_w", "bbox_b")
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
    # the SVM features are scaled to a mean L2 norm of feature_norm over a uniform sample of
    # this many windows (train/detection/svms.py, _first_pass_rows)
    svm_norm_windows=10000,
    # the most negatives a class's SVM cache holds (train/detection/svms.py): the SVMs keep
    # the positives and up to 1.25 x this many windows per class in float16 (8 KB each for
    # fc7, 25 KB for ZF-5's pool5): 20 classes x 25,000 x 8 KB = 4 GB at most for fc7
    svm_cache_windows=20000,
    # the most sampled windows fine-tuning holds pooled at once (train/detection/finetune.py):
    # 20,000 x 25 KB = 512 MB for ZF-5's pool5; more images are visited in groups
    ft_cache_windows=20000,
    # Platt scaling of the SVM scores for model combination (train/detection/calibration.py),
    # on at most this many training images and false windows per class, scored out-of-fold
    # by SVMs trained on the other calib_folds - 1 folds of the images (1: in-sample)
    # (calib_dets: the held-out detections kept per image and class, to judge a combination)
    calib_images=500, calib_negatives=100000, calib_folds=2, calib_dets=30,
    # MB of float64 box-regression statistics held at once (X^T X is D x D per class: 1.25
    # GiB for pool5 of ZF-5, so 3 classes per pass over the images at 4096)
    bbox_stats_mb=4096,
    bbox_iou=0.5, bbox_lambda=1000.0, nms=0.3, max_per_image=100)


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
        self.head_params.to(model.device)                      # the fc head where the trunk is
        self.feature_dim = self.head_params[f"{self.hidden[-1]}.W"].value.shape[0]
        self.svm_w = self.svm_b = self.svm_calib = self.bbox_w = self.bbox_b = None
        self.svm_oof_images = self.svm_oof_dets = self.svm_oof_gt = None
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
        """Write the detector as a minispp checkpoint (docs/design.md, "Checkpoints"): the
        base net's parameters, its extras plus the head ("head:<param>") and each scorer
        ("scorer:<scales>:<part>") as extra arrays, and the detector's classes, config and
        scorer scales in meta["detector"]; every field checksummed, written atomically."""
        detector = {"classes": self.classes, "config": self.config_json(),
                    "scorers": {k: {"svm_scale": v["svm_scale"], "bbox_scale": v["bbox_scale"]}
                                for k, v in self.scorers.items()},
                    "base_checkpoint": self.model.checksum, **(extra_meta or {})}
        extras = dict(self.model.extras)
        extras.update({f"head:{name}": p.value for name, p in self.head_params.items()})
        for key, parts in self.scorers.items():
            extras.update({f"scorer:{key}:{name}": parts[name] for name in SCORER_PARTS
                           if parts[name] is not None})
        meta = {"config": {"mean": self.model.meta.get("config", {}).get("mean", "image")},
                "detector": detector}
        self.model.save(path, meta=meta, extras=extras)


def load_detector(path):
    """A Detector saved by Detector.save: the checkpoint is read and verified by nets.load,
    then the head and the scorers are checked against the shapes the detector expects."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "detector.h5")
    if not os.path.exists(path):
        raise ValueError(f"no detector at {path}; train one with `minispp detect-train`")
    with h5py.File(path, "r") as f:
        old_format = str(f.attrs.get("format", ""))
    if old_format.startswith("minispp-detector"):
        raise ValueError(f"{path} was written by an earlier development version of minispp "
                         f"(format {old_format!r}); run `minispp detect-train` again with the same "
                         f"--out: its proposal and conv5 caches are reused")
    model = nets.load(path)
    meta = model.meta.get("detector")
    if meta is None:
        raise ValueError(f"{path} is a minispp checkpoint but not a detector; train one with "
                         f"`minispp detect-train`")
    arrays = model.extras
    model.extras = {k: v for k, v in arrays.items() if not k.startswith(("head:", "scorer:"))}
    model.checksum = meta["base_checkpoint"]
    config = dict(meta["config"])
    config["scales"] = tuple(config["scales"])
    config["svm_scales"] = tuple(tuple(v) for v in config["svm_scales"])
    det = Detector(model, meta["classes"], config)
    for name, p in det.head_params.items():
        stored = arrays.get(f"head:{name}")
        if stored is None or stored.shape != p.value.shape:
            raise ValueError(f"detector {path}: head parameter {name} is "
                             f"{'missing' if stored is None else stored.shape}, expected {p.value.shape}")
        p.value[...] = to_device(stored, det.head_params.device)
    for key, scales in meta["scorers"].items():
        det.scorers[key] = {name: arrays.get(f"scorer:{key}:{name}") for name in SCORER_PARTS}
        det.scorers[key].update(scales)
    det.meta = meta
    det.use_scales(det.config["scales"])
    return det


def train_detector(voc, checkpoint, out, split="trainval", limit=None, progress=True,
                   precomputed=None, **config):
    """The whole training; writes out/detector.h5 and out/train_log.json; returns the Detector."""
    os.makedirs(out, exist_ok=True)
    model = nets.load(checkpoint)
    for p in model.params.values():         # the trunk is not trained here: no solver state
        p.state = {}
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
    if not distributed.world().is_root:      # under MPI the ranks shared the caches; rank 0 trains
        return None
    times = {"proposals_and_conv5": time.perf_counter() - t0}
    peak_mb = {"proposals_and_conv5": peak_rss_mb()}      # the peak so far, after each stage
    workers_mb = peak_rss_mb(children=True)    # the selective-search workers: no other child yet
    if det.config["svm_C"] is None:
        det.config["svm_C"] = svm_C_for(len(images))
        log(f"SVM C = 0.001 x 5011 / {len(images)} images = {det.config['svm_C']:.4g}")
    t = time.perf_counter()
    finetune(det, images, conv, log, progress)
    det.head_params.release_training_state()     # fc6-fc8 only run forward from here on
    return_free_memory()
    times["finetune"] = time.perf_counter() - t
    peak_mb["finetune"] = peak_rss_mb()
    times["svms"] = times["bbox"] = 0.0
    index = {image_id: i for i, image_id in enumerate(ds.ids)}
    for scales in det.config["svm_scales"]:          # SVMs and regressors for each test scale set
        t = time.perf_counter()
        maps = scale_caches(out, model, scales, det.mean, det.pixel_scale)
        for im in tqdm(images, desc=f"conv5 at {scales_key(scales)}", unit="img", disable=not progress):
            if not maps.has(im.id):
                maps.get(im.id, lambda i=index[im.id]: ds.load(i)[0])
        times[f"conv5 {scales_key(scales)}"] = time.perf_counter() - t
        peak_mb[f"conv5 {scales_key(scales)}"] = peak_rss_mb()
        log(f"SVMs and box regressors on features at {scales_key(scales)}:")
        t = time.perf_counter()
        train_svms(det, images, maps, log, progress, scratch=os.path.join(out, "svm-scratch"))
        calibrate_svms(det, images, maps, log, progress, scratch=os.path.join(out, "svm-scratch"))
        times["svms"] += time.perf_counter() - t
        peak_mb[f"svms {scales_key(scales)}"] = peak_rss_mb()
        return_free_memory()
        t = time.perf_counter()
        train_box_regressors(det, images, maps, log, progress, scratch=os.path.join(out, "svm-scratch"))
        times["bbox"] += time.perf_counter() - t
        peak_mb[f"bbox {scales_key(scales)}"] = peak_rss_mb()
        det.keep_scorer(scales)
    det.save(os.path.join(out, "detector.h5"), {"train_split": split, "voc": os.path.abspath(voc),
                                                "train_images": len(images)})
    if workers_mb > 0:                         # proposals were computed here, not all cached
        peak_mb["selective search workers"] = workers_mb
    log("peak resident memory (MiB) after each stage: " +
        ", ".join(f"{k} {v:.0f}" for k, v in peak_mb.items()))
    with open(os.path.join(out, "train_log.json"), "w") as fh:
        json.dump({"log": lines, "seconds": times, "peak_rss_mb": peak_mb,
                   "config": det.config_json()},
                  fh, indent=1)
    return det


def calibrate_detector(detdir, voc=None, split=None, limit=None, folds=None, scale_sets=None,
                       progress=True):
    """Fit the Platt calibration of a trained detector's SVMs again (calibrate_svms), for each
    of its scorers or for those of scale_sets, without retraining anything else; the
    detector in detdir/detector.h5 is rewritten and calibrate_log.json written beside it.
    The training images are those it was trained on (its meta: VOC root, split, count)
    unless given; their proposal and conv5 caches in detdir are reused."""
    det = load_detector(detdir)
    meta = dict(det.meta)
    voc = voc or meta.get("voc")
    split = split or meta.get("train_split", "trainval")
    limit = limit or meta.get("train_images")
    if voc is None:
        raise ValueError(f"{detdir} does not record its VOC root: pass --voc")
    if folds is not None:
        if int(folds) < 1:
            raise ValueError(f"--folds must be at least 1, got {folds}")
        det.config["calib_folds"] = int(folds)
    keys = list(det.scorers) if scale_sets is None else [scales_key(s) for s in scale_sets]
    missing = [k for k in keys if k not in det.scorers]
    if missing:
        raise ValueError(f"{detdir} has no SVMs trained at scales {missing[0]} (it has "
                         f"{', '.join(det.scorers)})")
    ds = VOCDataset(voc, split)
    images, _ = prepare_images(ds, detdir, det, progress, limit)
    if not distributed.world().is_root:      # under MPI the ranks shared the caches; rank 0 fits
        return None
    lines, times = [], {}

    def log(msg):
        lines.append(msg)
        print(msg)
    index = {image_id: i for i, image_id in enumerate(ds.ids)}
    for key in keys:
        t = time.perf_counter()
        scales = tuple(int(v) for v in key.split(","))
        det.use_scales(scales)
        maps = scale_caches(detdir, det.model, scales, det.mean, det.pixel_scale)
        for im in tqdm(images, desc=f"conv5 at {key}", unit="img", disable=not progress):
            if not maps.has(im.id):
                maps.get(im.id, lambda i=index[im.id]: ds.load(i)[0])
        log(f"calibration at {key}:")
        calibrate_svms(det, images, maps, log, progress, scratch=os.path.join(detdir, "svm-scratch"))
        det.keep_scorer(scales)            # the new calibration and held-out detections
        times[key] = time.perf_counter() - t
    det.use_scales(det.config["scales"])
    extra = {k: meta[k] for k in ("train_split", "voc", "train_images") if k in meta}
    det.save(os.path.join(detdir, "detector.h5"), extra)
    with open(os.path.join(detdir, "calibrate_log.json"), "w") as fh:
        json.dump({"log": lines, "seconds": times, "images": len(images),
                   "calib_folds": det.config["calib_folds"], "peak_rss_mb": peak_rss_mb()}, fh, indent=1)
    return det
