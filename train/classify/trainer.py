"""Classification training (paper Sec. 3.1, 2.3): single-size, multi-size and random-size.

One model (one Params store) and one fixed-size Net instance per input size, like
cuda-convnet's networks that share all parameters: a multi-size run trains a whole epoch at
224, the next at 180 (the 224 crops resized), and so on; a random-size run draws the size
from [180, 224] each epoch. SGD with momentum, the learning rate divided by 10 when the
validation error plateaus (at most twice).

Robustness: a checkpoint after every epoch and on Ctrl-C or SIGTERM (atomic writes; the run
then stops with exit status 130 or 143, so `train && test` does not go on); temporary files
of saves that were killed are removed when the next run starts; --resume continues exactly
the recorded run where it stopped, mid-epoch included (same settings, same batches, same
dropout masks, same losses): a setting given with it that differs from the recorded one is
refused, except a larger --epochs, which extends the run and says so; a NaN/inf loss stops
the run and keeps the last good checkpoint; an unreadable image is reported and skipped.

Reproducibility: two runs with the same settings give bit-identical parameters. The GEMMs'
rounding depends on OpenBLAS's thread count (it partitions the products by threads), so a
run pins it to blas_threads (recorded, default 2) whatever the machine's core count or
OPENBLAS_NUM_THREADS; the Numba kernels give the same bits with any number of threads
(no reduction is split across threads), and the loader builds every batch from a fixed order
with one random Generator per sample, whatever the number of workers.

Several processes (README, "Beyond one machine"; minispp.distributed): under `mpiexec -n R`
each global batch of `batch` images is split over the R ranks in a fixed order, each rank
backpropagates the loss sum of its share, one allreduce of a fused buffer sums the
gradients (and the step's loss, errors and image count), and every rank applies the same
update; the parameters are compared across ranks by a checksum every check_every steps.
Augmentation (one Generator per sample) and dropout masks (keyed by the image's index in
the training set, the epoch and the seed: layers.Dropout.key_masks) do not depend on which
rank runs an image, so R ranks give the parameters of one process to float32 rounding, and
a run resumes on another R. Rank 0 alone writes checkpoints, logs and curves.
"""
import contextlib
import csv
import json
import os
import signal
import threading
import time

import numpy as np
from tqdm import tqdm

import nets
from layers.dropout import Dropout
from minispp import distributed
from nets.model import input_normalization
from minispp.storage.checkpoint import remove_stale_temporaries
from minispp.data.imagefolder import BadImage, ImageFolder
from minispp.layer import finite_checks
from minispp.backend import to_numpy
from minispp.data.device_feed import device_batches
from minispp.data.loader import BatchLoader
from minispp.solver import SGD, PlateauSchedule
from minispp.data.transforms import crop, resize_min_side, rgb_pca

from train.classify.evaluate import evaluate, topk_errors
from train.classify.views import CROP, RESIZE, InputMaker

MODES = ("single", "multi", "random")
# how a new run draws its dropout masks (recorded): per image, keyed by its index (Dropout.key_masks)
PER_IMAGE = "per-image"
# the generator of a new run's masks (recorded): Philox4x32-10 on the array's device
# (layers.Dropout.draw_mask); a run recorded without it keeps the host draws it began with
PHILOX = "philox4x32-10"
CHECKPOINT = "checkpoint.h5"
BEST = "best.h5"


# A run's settings and their defaults (the command line's too). They are recorded in the
# checkpoint; a resumed run keeps the recorded ones.
DEFAULTS = {"net": "zf5", "spp": (6, 3, 2, 1), "form": "appendix", "mode": "multi",
            "epochs": 10, "batch": 32, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
            "seed": 0, "mean": "image", "patience": 3, "blas_threads": 2}
FLAGS = {name: "--" + name.replace("_", "-") for name in DEFAULTS}


class _Unset:
    """A setting the caller did not give (None is a value: spp=None is the no-SPP net)."""

    def __repr__(self):
        return "UNSET"


UNSET = _Unset()


class TrainingStopped(Exception):
    """The run stopped early (NaN loss, a signal); .code is the exit status for the command
    line."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class Interrupted(TrainingStopped):
    """Stopped by SIGINT (Ctrl-C) or SIGTERM after saving the checkpoint; .code is 128 +
    the signal number (130, 143), the shell's convention for a process ended by a signal."""


def _same_setting(name, given, recorded):
    if name == "spp":
        return (None if given is None else [int(v) for v in given]) == recorded
    if name == "mean":
        if isinstance(given, str) or isinstance(recorded, str):
            return str(given) == str(recorded)
        return float(given) == float(recorded)
    if name in ("lr", "momentum", "weight_decay"):
        return float(given) == float(recorded)
    return given == recorded


def _show(name, value):
    if name == "spp":
        return "none" if value is None else ",".join(str(v) for v in value)
    return "(not pinned)" if value is None and name == "blas_threads" else str(value)


def best_epoch(history):
    """The history row of the epoch that best.h5 holds: the lowest center-crop val top-1
    error, the later epoch on a tie (best.h5 is written when an epoch equals the best)."""
    low = min(r["val_top1"] for r in history)
    return [r for r in history if r["val_top1"] == low][-1]


def epoch_size(mode, epoch, seed):
    """The input side of an epoch: 224; 224 and 180 alternating; or uniform in [180, 224]."""
    if mode == "single":
        return CROP
    if mode == "multi":
        return CROP if epoch % 2 == 0 else 180
    return int(np.random.default_rng([seed, 3, epoch]).integers(180, CROP + 1))


def data_statistics(dataset, count, seed):
    """Mean image (3, 224, 224) of center crops, the standard deviation of the mean-subtracted
    pixels (a scalar) and the RGB PCA, from up to `count` images."""
    rng = np.random.default_rng([seed, 4])
    idx = rng.permutation(len(dataset))[:count]
    total = np.zeros((CROP, CROP, 3), np.float64)
    crops, n = [], 0
    for i in idx:
        try:
            img, _ = dataset.load(int(i))
        except BadImage:
            continue
        c = crop(resize_min_side(img, RESIZE), CROP, "center")
        total += c
        crops.append(c)
        n += 1
    if n == 0:
        raise ValueError(f"no readable image in {dataset.root}")
    mean_hwc = total / n
    std = float(np.sqrt(np.mean([np.mean((c - mean_hwc) ** 2) for c in crops])))
    vals, vecs = rgb_pca(crops, rng=rng)
    return (mean_hwc.transpose(2, 0, 1).astype(np.float32), np.float32(max(std, 1e-3)),
            vals.astype(np.float32), vecs.astype(np.float32))


class Trainer:
    """Everything of one run: data, model, solver, schedule, position, history, files."""

    def __init__(self, data, out, net=UNSET, spp=UNSET, form=UNSET, mode=UNSET, epochs=UNSET,
                 batch=UNSET, lr=UNSET, momentum=UNSET, weight_decay=UNSET, seed=UNSET,
                 workers=2, mean=UNSET, patience=UNSET, resume=False, stats_images=1000,
                 progress=True, blas_threads=UNSET, comm=None, check_every=50):
        """A new run (a setting not given takes DEFAULTS), or with resume the run recorded in
        out/checkpoint.h5: data (None: the recorded folder) and every setting given must be
        the recorded ones, except a larger epochs, which extends the run. workers,
        stats_images (a new run's statistics) and progress do not change the results.
        comm: the communicator (default minispp.distributed.world(): one process unless
        launched by MPI); check_every: steps between the ranks' parameter checksums."""
        given = {"net": net, "spp": spp, "form": form, "mode": mode, "epochs": epochs,
                 "batch": batch, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                 "seed": seed, "mean": mean, "patience": patience, "blas_threads": blas_threads}
        given = {k: v for k, v in given.items() if v is not UNSET}
        settings = dict(DEFAULTS, **given)
        net, spp, form, mode = settings["net"], settings["spp"], settings["form"], settings["mode"]
        epochs, batch, lr = settings["epochs"], settings["batch"], settings["lr"]
        momentum, weight_decay = settings["momentum"], settings["weight_decay"]
        seed, mean, patience = settings["seed"], settings["mean"], settings["patience"]
        for name in ("epochs", "batch", "patience", "blas_threads"):
            v = settings[name]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{FLAGS[name]} must be a positive integer, got {v!r}")
        if not resume:
            if mode not in MODES:
                raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
            if spp is None and mode != "single":
                raise ValueError(f"a no-SPP net takes only 224x224 inputs: use --mode single, not {mode}")
        self.comm = comm or distributed.world()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"--check-every must be a positive integer, got {check_every!r}")
        self.check_every, self.steps, self.reducer = check_every, 0, None
        self.out, self.progress = os.fspath(out), progress and self.comm.is_root
        os.makedirs(self.out, exist_ok=True)
        self.ckpt_path = os.path.join(self.out, CHECKPOINT)
        if self.comm.is_root:
            for path in remove_stale_temporaries(self.out, (CHECKPOINT, BEST)):
                print(f"removed {path}: the temporary file of a save that was killed")
        self.workers = workers
        if resume:
            data = self._resume(data, given)
        elif data is None:
            raise ValueError("--data is required (only --resume takes the recorded one)")
        self.train_set = ImageFolder(os.path.join(data, "train"))
        self.val_set = ImageFolder(os.path.join(data, "val"), classes=self.train_set.classes)
        if resume:
            if self.cfg["classes"] != self.train_set.classes:
                raise ValueError(f"--resume: {self.ckpt_path} was trained on classes "
                                 f"{self.cfg['classes'][:5]}..., the data has {self.train_set.classes[:5]}...")
        else:
            if os.path.exists(self.ckpt_path):
                raise ValueError(f"{self.ckpt_path} exists: pass --resume to continue that run, "
                                 f"or choose another --out")
            self.cfg = {"data": os.path.abspath(data), "net": net,
                        "spp": list(spp) if spp else None, "form": form, "mode": mode,
                        "epochs": epochs, "batch": batch, "lr": lr, "momentum": momentum,
                        "weight_decay": weight_decay, "seed": seed, "mean": mean,
                        "patience": patience, "blas_threads": int(settings["blas_threads"]),
                        "classes": self.train_set.classes, "dropout_masks": PER_IMAGE,
                        "dropout_generator": PHILOX}
            self.model = nets.build(net, num_classes=len(self.train_set.classes), spp=spp,
                                    form=form, rng=np.random.default_rng([seed, 0]))
            mean_img, std, vals, vecs = self._statistics(stats_images, seed)
            self.extras = {"mean_image": mean_img, "pixel_std": std, "pca_eigvals": vals,
                           "pca_eigvecs": vecs}
            self.solver = SGD(self.model.params, lr, momentum, weight_decay)
            self.schedule = PlateauSchedule(patience=patience)
            self.epoch, self.batch_index, self.history = 0, 0, []
            self.partial = {"loss": 0.0, "err": 0, "n": 0, "seconds": 0.0, "wait": 0.0, "skipped": 0}
        self.stop_requested, self.stop_signal, self.stop_agreed = False, None, False
        if self.comm.size > 1 and self.comm.is_root:
            print(f"data-parallel on {self.comm.describe()}: global batch {self.cfg['batch']}, "
                  f"at most {-(-self.cfg['batch'] // self.comm.size)} images per rank")
            n = int(self.cfg.get("blas_threads") or 0)
            cores = os.cpu_count() or 1
            if n * self.comm.local_size > cores:
                print(f"note: {self.comm.local_size} ranks x --blas-threads {n} on {cores} cores: "
                      f"the ranks' BLAS threads oversubscribe the machine (a new run with "
                      f"--blas-threads {max(1, cores // self.comm.local_size)} fits it)")

    def _statistics(self, count, seed):
        """data_statistics on rank 0, broadcast to the others (the same arrays on every rank)."""
        comm = self.comm
        if comm.size == 1:
            return data_statistics(self.train_set, count, seed)
        if comm.is_root:
            mean_img, std, vals, vecs = data_statistics(self.train_set, count, seed)
            mean_img, vals, vecs = (np.ascontiguousarray(a) for a in (mean_img, vals, vecs))
            std = np.array([std], np.float32)
        else:
            mean_img, std = np.empty((3, CROP, CROP), np.float32), np.empty(1, np.float32)
            vals, vecs = np.empty(3, np.float32), np.empty((3, 3), np.float32)
        for a in (mean_img, std, vals, vecs):
            comm.broadcast(a)
        return mean_img, np.float32(std[0]), vals, vecs

    # -- state ------------------------------------------------------------------------------
    @property
    def mean(self):
        return input_normalization(self.extras, self.cfg["mean"])[0]

    @property
    def pixel_scale(self):
        return input_normalization(self.extras, self.cfg["mean"])[1]

    def _meta(self):
        return {"config": self.cfg, "epoch": self.epoch, "batch": self.batch_index,
                "lr": self.solver.lr, "schedule": self.schedule.state(),
                "history": self.history, "partial": self.partial,
                "rng": self.model.rng.bit_generator.state}

    def save(self, path=None):
        """Write the checkpoint (rank 0 alone; every rank holds the same state)."""
        if self.comm.is_root:
            self.model.save(path or self.ckpt_path, meta=self._meta(), extras=self.extras)

    def _resume(self, data, given):
        """Load the recorded run; refuse given settings (and data) that differ from it,
        naming each; extend it when a larger epochs is given. Returns the data folder."""
        if not os.path.exists(self.ckpt_path):
            raise ValueError(f"--resume: no checkpoint at {self.ckpt_path}")
        self.model = nets.load(self.ckpt_path)
        meta = self.model.meta
        self.cfg = meta["config"]
        recorded = dict(self.cfg, blas_threads=self.cfg.get("blas_threads"))
        differ = [f"{FLAGS[k]} {_show(k, v)} (recorded: {_show(k, recorded[k])})"
                  for k, v in given.items() if k != "epochs" and not _same_setting(k, v, recorded[k])]
        if data is not None and os.path.realpath(data) != os.path.realpath(self.cfg["data"]):
            differ.insert(0, f"--data {data} (recorded: {self.cfg['data']})")
        epochs = given.get("epochs", self.cfg["epochs"])
        if epochs < self.cfg["epochs"]:
            differ.append(f"--epochs {epochs} (recorded: {self.cfg['epochs']}; only more epochs "
                          f"than recorded extend a run)")
        if self.comm.size > 1 and self.cfg.get("dropout_masks") != PER_IMAGE:
            differ.append(f"{self.comm.size} processes (the run draws its dropout masks from one "
                          f"Generator, as runs recorded before per-image masks did, so its "
                          f"batches cannot be split over ranks: resume it in one process)")
        if differ:
            raise ValueError(f"--resume continues the run recorded in {self.ckpt_path} exactly, "
                             f"and these arguments differ from it: {'; '.join(differ)}. Leave "
                             f"them out, or start a new run with another --out")
        ranks = meta["partial"].get("ranks", meta["history"][-1].get("ranks", 1)
                                    if meta["history"] else 1)
        if ranks != self.comm.size and self.comm.is_root:
            print(f"--resume: the run was recorded on {ranks} process(es), it continues on "
                  f"{self.comm.size}: the same batches, augmentation and dropout masks; the "
                  f"gradient sums round differently (equal to float32 rounding, not bit for bit)")
        if epochs > self.cfg["epochs"] and self.comm.is_root:
            print(f"--resume --epochs {epochs}: extending the run in {self.out} from "
                  f"{self.cfg['epochs']} to {epochs} epochs (it is at epoch {meta['epoch']})")
        if epochs > self.cfg["epochs"]:
            self.cfg.setdefault("extended", []).append(
                {"from": self.cfg["epochs"], "to": epochs, "at_epoch": meta["epoch"]})
            self.cfg["epochs"] = epochs
        self.extras = self.model.extras
        self.model.rng.bit_generator.state = meta["rng"]
        self.solver = SGD(self.model.params, meta["lr"], self.cfg["momentum"], self.cfg["weight_decay"])
        self.schedule = PlateauSchedule(patience=self.cfg["patience"])
        self.schedule.load(meta["schedule"])
        self.epoch, self.batch_index = meta["epoch"], meta["batch"]
        self.history, self.partial = meta["history"], meta["partial"]
        return self.cfg["data"] if data is None else data

    # -- the loop -----------------------------------------------------------------------------
    def run(self):
        """Train to cfg["epochs"]; returns the history (one dict per epoch) and prints the
        summary (summary()). On SIGINT or SIGTERM the batch is finished, the checkpoint
        saved, and Interrupted raised (code 130 or 143). A finished run says so and trains
        nothing."""
        if self.epoch >= self.cfg["epochs"]:
            if self.comm.is_root:
                print(f"the run in {self.out} is finished ({self.epoch} of {self.cfg['epochs']} "
                      f"epochs): nothing to train (give --resume a larger --epochs to extend it)")
                print(self.summary())
            return self.history
        handled = (signal.SIGINT, signal.SIGTERM)
        main = threading.current_thread() is threading.main_thread()   # signals: main thread only
        previous = {s: signal.signal(s, self._on_signal) for s in handled} if main else {}
        try:
            with self._blas_threads():
                self._check_identical("at the start")
                while self.epoch < self.cfg["epochs"]:
                    if self._stop_agreed() or not self._train_epoch():
                        self.save()
                        self.comm.barrier()           # no rank ends before rank 0 has saved
                        signum = self.stop_signal or signal.SIGINT
                        raise Interrupted(
                            f"stopped by {signal.Signals(signum).name} at epoch {self.epoch + 1}, "
                            f"batch {self.batch_index}; checkpoint {self.ckpt_path} saved "
                            f"(continue with --resume)", code=128 + int(signum))
                    self._end_epoch()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.comm.is_root:
            print(self.summary())
        return self.history

    def _blas_threads(self):
        """OpenBLAS pinned to the run's recorded thread count, on which the GEMMs' rounding
        depends (a run recorded before the count was: left as it is)."""
        n = self.cfg.get("blas_threads")
        if not n:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=int(n), user_api="blas")

    def summary(self):
        """The figures the README quotes: epochs, the best epoch (the one best.h5 holds) with
        its center-crop val top-1/top-5 error, and the files."""
        if not self.history:
            return f"no epoch finished yet; checkpoint {self.ckpt_path}"
        best, last = best_epoch(self.history), self.history[-1]
        return (f"done: {self.epoch} epochs; checkpoint {self.ckpt_path}\n"
                f"best epoch {best['epoch']} of {self.epoch}: val top-1 error "
                f"{best['val_top1']:.1%}, top-5 {best['val_top5']:.1%} (center crop, "
                f"{len(self.val_set)} images) -> {os.path.join(self.out, BEST)}\n"
                f"last epoch {last['epoch']}: val top-1 error {last['val_top1']:.1%}, top-5 "
                f"{last['val_top5']:.1%}")

    def _on_signal(self, signum, frame):
        if getattr(self, "signalled", False):
            raise KeyboardInterrupt        # a second signal: stop now, no checkpoint
        self.signalled = True              # (a stop agreed with other ranks is not a signal)
        self.stop_requested, self.stop_signal = True, signum
        print(f"\n{signal.Signals(signum).name}: finishing this batch, then saving a checkpoint "
              f"and stopping (Ctrl-C again to abort without saving)", flush=True)

    def _check_identical(self, where):
        try:
            distributed.check_identical(self.comm, self.model.params, where)
        except distributed.ParametersDiverged as err:
            raise TrainingStopped(str(err), code=4) from None

    def _key_dropout(self, net, epoch, ids):
        """Dropout masks keyed by (seed, epoch, layer, image index) for this batch; a run
        recorded before per-image masks keeps drawing from the model's Generator, and one
        recorded before the Philox masks keeps its host draws (Dropout.generator)."""
        per_image = self.cfg.get("dropout_masks") == PER_IMAGE
        generator = "philox" if self.cfg.get("dropout_generator") == PHILOX else "numpy"
        drops = [layer for layer in net.layers if isinstance(layer, Dropout)]
        for k, layer in enumerate(drops):
            layer.generator = generator
            layer.key_masks((self.cfg["seed"], 5, epoch, k) if per_image else None, ids)

    def _train_epoch(self):
        cfg, e, comm = self.cfg, self.epoch, self.comm
        size = epoch_size(cfg["mode"], e, cfg["seed"])
        # each rank's net holds its share of a global batch (at most ceil(batch / R) images)
        net = self.model.instance(-(-cfg["batch"] // comm.size), (size, size))
        pca = (self.extras["pca_eigvals"], self.extras["pca_eigvecs"])
        order = np.random.default_rng([cfg["seed"], 1, e]).permutation(len(self.train_set))
        loader = BatchLoader(self.train_set, order, cfg["batch"],
                             InputMaker("train", self.mean, size, pca, pixel_scale=self.pixel_scale),
                             seed=(cfg["seed"], 2, e),
                             workers=self.workers, start_batch=self.batch_index,
                             report=tqdm.write, indices=True,
                             shard=(comm.rank, comm.size) if comm.size > 1 else None)
        bar = tqdm(total=len(loader), initial=self.batch_index, unit="batch",
                   desc=f"epoch {e + 1}/{cfg['epochs']} {size}px", disable=not self.progress)
        p = self.partial
        t_start = time.perf_counter()
        for b, x, labels, ids in device_batches(loader, self.model.device):  # GPU: pinned, ahead
            self.model.params.zero_grad()
            if comm.size == 1:
                loss, err1, n, finite = self._local_step(net, e, x, labels, ids, 1.0)
                if not finite:
                    bar.close()
                    self._not_finite(e, b)
                self.solver.step()
            else:
                loss, err1, n = self._parallel_step(net, e, x, labels, ids, bar, b)
            p["loss"] += loss
            p["err"] += err1
            p["n"] += n
            self.batch_index = b + 1
            elapsed = p["seconds"] + time.perf_counter() - t_start
            bar.set_postfix(loss=f"{p['loss'] / p['n']:.3f}", img_s=f"{p['n'] / max(elapsed, 1e-9):.1f}",
                            data_wait=f"{(p['wait'] + loader.wait_seconds) / max(elapsed, 1e-9):.0%}")
            bar.update(1)
            if self.stop_requested if comm.size == 1 else self.stop_agreed:
                break
        p["seconds"] += time.perf_counter() - t_start
        p["wait"] += loader.wait_seconds
        p["skipped"] += len(loader.skipped)
        bar.close()
        return not (self.stop_requested if comm.size == 1 else self.stop_agreed)

    def _stop_agreed(self):
        """Whether a stop was asked for, on any rank: every rank gets the same answer (a
        signal reaches the ranks at different moments; a rank acting on its own flag would
        leave the others in a collective it never joins)."""
        if self.comm.size == 1:
            return self.stop_requested
        flag = self.comm.allreduce_max(np.array([int(self.stop_requested)], dtype=np.int64))
        self.stop_agreed = bool(flag[0])
        if self.stop_agreed and not self.stop_requested:
            self.stop_requested, self.stop_signal = True, signal.SIGTERM
        return self.stop_agreed

    def _local_step(self, net, epoch, x, labels, ids, dloss):
        """Forward and backward of this process's images; returns (loss summed over them,
        top-1 errors, images, finite). dloss 1.0: the mean's gradient; n: the sum's."""
        self._key_dropout(net, epoch, ids)
        try:
            # no NaN scan of every layer input here: the loss check stops a diverged run
            # (bench_nets.py --contract times what the scan costs)
            with finite_checks(False):
                loss = net.loss(x, labels, train=True)
        except FloatingPointError:
            return 0.0, 0, 0, False
        with finite_checks(False):
            net.backward(dloss)
        err1, _ = topk_errors(to_numpy(net.loss_layer.probs), labels)
        return loss * len(labels), err1, len(labels), True

    def _not_finite(self, e, b):
        raise TrainingStopped(
            f"loss is not finite at epoch {e + 1}, batch {b + 1} (learning rate "
            f"{self.solver.lr:g}); stopping. The last good checkpoint is "
            f"{self.ckpt_path if os.path.exists(self.ckpt_path) else '(none yet)'}; "
            f"lower --lr and train again", code=3)

    def _parallel_step(self, net, e, x, labels, ids, bar, b):
        """One data-parallel step: this rank's share (perhaps none), one allreduce of the
        gradient sums with [loss sum, errors, images, stop requested, not finite], the
        global mean, the same SGD update on every rank. The stop and the non-finite loss
        are decided together, so every rank stops at the same step."""
        if self.reducer is None:
            self.reducer = distributed.GradientAllreduce(self.comm, self.model.params, 5)
        loss = err1 = n = 0
        finite = True
        if x is not None:
            loss, err1, n, finite = self._local_step(net, e, x, labels, ids, float(len(labels)))
        total = self.reducer.reduce([loss, err1, n, float(self.stop_requested), float(not finite)],
                                    count=2)
        if total[4] > 0:
            bar.close()
            self._not_finite(e, b)
        self.stop_agreed = total[3] > 0     # this rank's own flag may be newer: the next step
        if self.stop_agreed and not self.stop_requested:
            self.stop_requested, self.stop_signal = True, signal.SIGTERM
        if total[2] > 0:                    # a batch of unreadable images only: no step
            self.solver.step()
        self.steps += 1
        if self.steps % self.check_every == 0:
            self._check_identical(f"after step {self.steps} (epoch {e + 1}, batch {b + 1})")
        return float(total[0]), int(round(total[1])), int(round(total[2]))

    def _validate(self):
        """Center-crop validation; under MPI each rank takes every R-th image and the error
        counts are summed."""
        cfg, comm = self.cfg, self.comm
        if comm.size == 1:
            return evaluate(self.model, self.val_set, "center", self.mean, batch=cfg["batch"],
                            workers=self.workers, progress=self.progress,
                            pixel_scale=self.pixel_scale)
        part = _Part(self.val_set, distributed.shard(np.arange(len(self.val_set)), comm))
        counts = np.zeros(4)            # top-1 errors, top-5 errors, images, skipped
        if len(part):
            try:
                r = evaluate(self.model, part, "center", self.mean, batch=cfg["batch"],
                             workers=self.workers, progress=self.progress,
                             pixel_scale=self.pixel_scale)
                counts[:] = (round(r["top1"] * r["images"]), round(r["top5"] * r["images"]),
                             r["images"], len(r["skipped"]))
            except ValueError:          # every image of this share unreadable
                counts[3] = len(part)
        comm.allreduce_sum(counts)
        if counts[2] == 0:
            raise ValueError(f"no readable image in {self.val_set.root}")
        return {"top1": counts[0] / counts[2], "top5": counts[1] / counts[2],
                "images": int(counts[2]), "skipped": [None] * int(counts[3])}

    def _end_epoch(self):
        cfg, p = self.cfg, self.partial
        val = self._validate()
        lr = self.solver.lr
        dropped = self.schedule.update(self.solver, val["top1"])
        row = {"epoch": self.epoch + 1, "size": epoch_size(cfg["mode"], self.epoch, cfg["seed"]),
               "lr": lr, "train_loss": p["loss"] / max(p["n"], 1),
               "train_top1": p["err"] / max(p["n"], 1), "val_top1": val["top1"],
               "val_top5": val["top5"], "images_per_s": p["n"] / max(p["seconds"], 1e-9),
               "data_wait": p["wait"] / max(p["seconds"], 1e-9),
               "skipped": p["skipped"] + len(val["skipped"]), "seconds": p["seconds"],
               "ranks": self.comm.size}
        self.history.append(row)
        self._check_identical(f"at the end of epoch {row['epoch']}")
        if self.comm.is_root:
            tqdm.write(f"epoch {row['epoch']}: train loss {row['train_loss']:.3f}, train top-1 "
                   f"{row['train_top1']:.1%}, val top-1 {row['val_top1']:.1%}, top-5 "
                       f"{row['val_top5']:.1%}, {row['images_per_s']:.1f} img/s, data wait "
                       f"{row['data_wait']:.1%}" + (f"; lr -> {self.solver.lr:g}" if dropped else ""))
        self.epoch, self.batch_index = self.epoch + 1, 0
        self.partial = {"loss": 0.0, "err": 0, "n": 0, "seconds": 0.0, "wait": 0.0, "skipped": 0}
        self.save()
        if val["top1"] <= min(r["val_top1"] for r in self.history):
            self.save(os.path.join(self.out, BEST))
        if self.comm.is_root:
            write_logs(self.out, self.history)


class _Part:
    """Some images of a data set (a rank's share of the validation set), as evaluate reads it."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices, self.root = dataset, [int(i) for i in indices], dataset.root

    def __len__(self):
        return len(self.indices)

    def load(self, i):
        return self.dataset.load(self.indices[i])


def write_logs(out, history):
    """log.csv, log.json and curves.png (loss and errors per epoch) beside the checkpoint."""
    tmp = os.path.join(out, ".log.json.tmp")
    with open(tmp, "w") as f:
        json.dump(history, f, indent=1)
    os.replace(tmp, os.path.join(out, "log.json"))
    tmp = os.path.join(out, ".log.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, os.path.join(out, "log.csv"))
    plot_curves(history, os.path.join(out, "curves.png"))


def plot_curves(history, path):
    """Training loss and train/val top-1, val top-5 error per epoch (needs matplotlib).
    Returns {label: (epochs, values)} as plotted (read back from the figure's lines), or
    None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train loss")
    a.set_xlabel("epoch")
    a.set_ylabel("softmax loss")
    a.legend()
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1 (center)"),
                       ("val_top5", "val top-5 (center)")):
        b.plot(ep, [100 * r[key] for r in history], "o-", label=label)
    b.set_xlabel("epoch")
    b.set_ylabel("error %")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plotted = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
               for ax in (a, b) for line in ax.get_lines()}
    plt.close(fig)
    return plotted
