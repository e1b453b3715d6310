"""Full-image features (paper Sec. 3.2-3.3): one representation per image from a
trained net, no fine-tuning, no augmentation, cached in HDF5 for the SVMs.

Views (the paper's comparison):
  full  the whole image resized so its shorter side is s, any aspect ratio, through the
        conv layers and the SPP layer at that size;
  crop  the center s x s crop of that resized image;
  warp  the whole image warped to s x s (aspect ratio lost).
Layers: "pool5" (the finest pyramid level, 6x6 for (6, 3, 2, 1); the last pool of a no-SPP
net), "spp" (the whole pyramid vector), "fc6" and "fc7" (after their ReLU; dropout is off).

One pass over the images fills the caches of several layers at once. Images whose inputs
have the same shape are batched together across the whole split (plan_batches): a batch is
never padded, since the zero padding of the convolutions, the pooling windows, the SPP bins
(docs/design.md, "SPP bins") and the mean image warped to each input size (docs/design.md,
"Input normalization") all depend on the input's exact size. A missing or unreadable image
is an error naming the file (missing files are found before anything is written); with
skip_unreadable (``--skip-unreadable``) it is reported, flagged invalid in the cache and
given zero features, and ``minispp svm`` lists and leaves out such images. Caches are
resumable (minispp.storage.feature_cache).

Under MPI (``mpiexec -n R minispp features ...``, minispp.distributed) shard k of the cache
(its images k * shard_size ...) is computed by rank k mod R, each rank writing its own
shards into the same ``.parts`` folder; rank 0 merges them when every rank is done. The
features are those of one process (an image's features do not depend on its batch), and a
killed run resumes from the shards written, on any number of ranks.

Labels are indices into the data set's class list, the same for every split, and that list
is part of each cache's identity: the classes of the devkit (README, "Readers"), or the
training split's class folders; never what one split happens to contain.
"""
import bisect
import os
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

import minispp  # noqa: F401
import nets
from layers import ReLU
from minispp.data.caltech import Caltech101
from minispp.data.imagefolder import BadImage, ImageFolder
from minispp import distributed
from minispp.data.loader import BatchLoader
from minispp.data.transforms import crop, min_side_shape, resize_min_side, resize_to, to_input
from minispp.data.voc import VOC_CLASSES, VOCDataset, find_year_folder
from minispp.geometry import spp_level_columns
from minispp.net import Net
from minispp.storage.feature_cache import CacheWriter

LAYERS = ("pool5", "spp", "fc6", "fc7")
VIEWS = ("full", "crop", "warp")


def view_input(img, view, s, mean, pixel_scale=1.0):
    """uint8 (H, W, 3) image -> float32 (3, h, w) input of one view at scale s."""
    if view == "full":
        out = resize_min_side(img, s)
    elif view == "crop":
        out = crop(resize_min_side(img, s), s, "center")
    elif view == "warp":
        out = resize_to(img, s, s)
    else:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return to_input(out, mean, pixel_scale)


class LayerTaps:
    """Where each feature layer is read in a model's layer stack: {layer: (net layer name,
    column slice or None)}; ``last`` is the deepest net layer needed."""

    def __init__(self, model, layers):
        names = [s.name for s in model.specs]
        pool5 = model.specs[model.trunk_length]
        self.pool_index = model.trunk_length
        self.taps = {}
        for layer in layers:
            if layer not in LAYERS:
                raise ValueError(f"unknown feature layer {layer!r}; expected one of {LAYERS}")
            if layer == "spp":
                if model.spp is None:
                    raise ValueError("the 'spp' layer needs an SPP net; this one is no-SPP "
                                     "(its 'pool5' is the 6x6 max pool)")
                self.taps[layer] = (pool5.name, None)
            elif layer == "pool5":
                self.taps[layer] = (pool5.name, self._finest_level(model))
            else:
                if layer not in names:
                    raise ValueError(f"net {model.definition} has no {layer} layer; its layers "
                                     f"are {names}")
                i = names.index(layer)
                follows = model.specs[i + 1] if i + 1 < len(names) else None
                self.taps[layer] = ((follows.name if follows is not None and follows.is_a(ReLU)
                                     else layer), None)

    @staticmethod
    def _finest_level(model):
        """Columns of the finest pyramid level in the SPP output (levels in the given order,
        each channel-major (C, n, n))."""
        if model.spp is None:
            return None
        columns = spp_level_columns(model.spp, model.trunk_channels)
        return slice(*columns[list(model.spp).index(max(model.spp))])

    def __call__(self, net, x):
        """{layer: (B, D) float32} for one batch x of the net's input size.

        The conv layers and the pooling or SPP layer (Sec. 2.3) run on the whole batch; the
        fully connected layers after it run one image at a time: a (1, D) product sums as
        a batch of one does, so fc6 and fc7 add no difference of their own to the batch's;
        and on the CPU it is the faster one at the small batches that full images of mixed
        sizes make (ZF-5's fc6, measured on 2 cores: about 24 ms an image as (1, D), 100 to
        250 ms a call as (B, D) for B from 2 to 16)."""
        wanted = {}
        for layer, (name, cols) in self.taps.items():
            wanted.setdefault(name, []).append((layer, cols))
        pool = net.layers[self.pool_index].name
        head = [n for n in wanted if net.index(n) > self.pool_index]
        outputs = net.outputs(x, (set(wanted) - set(head)) | ({pool} if head else set()))
        if head:
            start = net.layers[self.pool_index + 1].name
            rows = [{n: np.array(h) for n, h in
                     net.outputs(outputs[pool][j:j + 1], head, start=start).items()}
                    for j in range(len(x))]
            outputs.update((n, np.concatenate([r[n] for r in rows])) for n in head)
        out = {}
        for name in wanted:
            h = outputs[name]
            flat = h.reshape(len(h), -1)
            for feat, cols in wanted[name]:
                out[feat] = np.array(flat if cols is None else flat[:, cols], dtype=np.float32)
        return out


class UnreadableImage(ValueError):
    """An image of the split that cannot be read while skipping is not asked for."""


SKIP_ADVICE = ("fix or replace it, or pass --skip-unreadable to leave such images out "
               "(flagged in the cache, reported and left out by `minispp svm`)")


class _Indexed:
    """A data set whose 'label' is the sample index, so a loader says which images it read.
    Unless skip, an unreadable image is an UnreadableImage error (the loader only skips
    BadImage)."""

    def __init__(self, dataset, skip=False):
        self.dataset, self.skip = dataset, skip

    def load(self, i):
        try:
            return self.dataset.load(i)[0], i
        except BadImage as err:
            if self.skip:
                raise
            raise UnreadableImage(f"{err}; {SKIP_ADVICE}") from None


def image_path(dataset, i):
    """The file of image i of a VOC, Caltech101 or class-folder data set."""
    if hasattr(dataset, "image_path"):
        return dataset.image_path(i)
    return dataset.samples[i][0]


def voc_classes(root):
    """The class list of a VOC devkit, the same for every split: the 20 VOC classes in the
    devkit's order when every per-class list ImageSets/Main/<class>_<split>.txt (of any
    split) names one of them, or when there are none; otherwise (a devkit-layout data set of
    other classes, such as the embedded one) the sorted names those lists give, over all
    splits. So a split missing one <class>_<split>.txt keeps the class (its labels then come
    from the XML, minispp.data.voc), and labels index the same list in every split."""
    main = os.path.join(find_year_folder(root), "ImageSets", "Main")
    names = set(os.listdir(main)) if os.path.isdir(main) else set()
    splits = {n[:-4] for n in names if n.endswith(".txt")}
    found = set()
    for n in names:
        stem = n[:-4] if n.endswith(".txt") else ""
        cls, sep, split = stem.rpartition("_")
        if sep and cls and split in splits:
            found.add(cls)
    if found <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(found)


def open_dataset(kind, root, split):
    """(dataset, ids, labels, classes) of a VOC devkit split, the whole of Caltech101
    (split 'all'; the 10 train/test splits are drawn by the SVM stage) or a class-folder
    split (root/split/<class>/...)."""
    if kind == "voc":
        ds = VOCDataset(root, split, classes=voc_classes(root))
        return ds, list(ds.ids), ds.labels(), ds.classes
    if kind == "caltech":
        if split not in ("all", None):
            raise ValueError(f"Caltech101 features are extracted for every image (--split all); "
                             f"the SVM stage draws its 10 splits. Got --split {split!r}")
        ds = Caltech101(root)
        return ds, ds.ids, ds.labels(), ds.classes
    if kind == "folder":
        train_classes = None
        if os.path.isdir(os.path.join(root, "train")):
            train_classes = ImageFolder(os.path.join(root, "train")).classes
        ds = ImageFolder(os.path.join(root, split), classes=train_classes)
        ids = [os.path.relpath(p, ds.root) for p, _ in ds.samples]
        return ds, ids, ds.labels(), ds.classes
    raise ValueError(f"unknown data set kind {kind!r}; expected voc, caltech or folder")


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_arguments(layers, scale, view, batch, workers, shard_size=64):
    """ValueError naming the first argument that makes no sense (before anything is read
    or written)."""
    _positive_int(scale, "--scale (the shorter side in pixels)")
    _positive_int(batch, "--batch")
    _positive_int(workers, "--workers")
    _positive_int(shard_size, "the shard size")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    if not layers:
        raise ValueError(f"no feature layer given; expected some of {LAYERS}")
    for layer in layers:
        if layer not in LAYERS:
            raise ValueError(f"unknown feature layer {layer!r}; expected one of {LAYERS}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"a feature layer is given twice: {list(layers)}")


def extract(checkpoint, kind, root, split, layers, scale, view, outs, batch=16, workers=2,
            progress=True, shard_size=64, mean_mode=None, command=None, skip_unreadable=False,
            comm=None):
    """Extract features of one data set split into one cache per layer.

    outs: {layer: cache path}. Existing finished caches with the same identity are kept,
    unfinished ones resumed, mismatched ones refused (CacheMismatch), and any other existing
    file at a path refused. A missing or unreadable image is a ValueError naming it (a
    missing one before anything is written) unless skip_unreadable: then it is reported and
    flagged invalid with a zero row. Images run in batches of at most `batch` of one input
    shape, wherever they are in the split (plan_batches); memory holds one batch, the one
    net that runs it, the loader's 2 x batch prefetched inputs and one shard, whatever the
    number of images (rows computed ahead of their shard wait on disk: _Spill).
    comm (default minispp.distributed.world()): the ranks sharing the work, by shards.
    Returns {"paths": {layer: path}, "images": n, "computed": images run now (by every
    rank), "seconds": s, "images_per_s": rate, "skipped": [messages of this rank]}."""
    comm = comm or distributed.world()
    layers = list(layers)
    check_arguments(layers, scale, view, batch, workers, shard_size)
    scale = int(scale)
    missing_out = [layer for layer in layers if layer not in outs]
    if missing_out:
        raise ValueError(f"no output path for layer(s) {missing_out}")
    paths = [os.path.abspath(os.fspath(outs[layer])) for layer in layers]
    if len(set(paths)) != len(paths):
        raise ValueError(f"two layers would be written to the same cache file: {paths}")
    model = nets.load(checkpoint)
    if view == "full" and model.spp is None and scale != 224:
        raise ValueError(f"a no-SPP net takes only 224 x 224 input; --view full at scale {scale} "
                         f"needs an SPP net (use --view crop or warp at 224)")
    mean_mode = mean_mode or model.meta.get("config", {}).get("mean", "image")
    mean, pixel_scale = model.input_normalization(mean_mode)
    taps = LayerTaps(model, layers)
    dataset, ids, labels, classes = open_dataset(kind, root, split)
    identity = {"checkpoint": model.checksum, "net": model.definition,
                "net_args": model.definition_args(), "data": kind, "split": split, "scale": int(scale),
                "view": view, "mean": str(mean_mode)}
    provenance = {"minispp_version": minispp.__version__, "checkpoint_path": os.path.abspath(checkpoint),
                  "data_root": os.path.abspath(root), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": command or "", "skip_unreadable": bool(skip_unreadable)}
    # every writer is checked before any is written to: a refused output leaves nothing
    writers = {layer: CacheWriter(outs[layer], dict(identity, layer=layer), ids, labels, classes,
                                  dict(provenance), shard_size) for layer in layers}
    todo = sorted(set().union(*(w.pending() for w in writers.values())))
    order = np.array([i for a, b in todo for i in range(a, b)], dtype=np.int64)
    if not skip_unreadable:             # every pending image, on every rank
        for i in order:
            path = image_path(dataset, int(i))
            if not os.path.isfile(path):
                raise UnreadableImage(f"image {ids[int(i)]} of {kind} split {split!r} is "
                                      f"missing: no file {path}; {SKIP_ADVICE}")
    if len(order):
        try:                            # the smallest input of this scale, before any write
            _dim(model, taps, layers[0], scale)
        except ValueError as err:
            raise ValueError(f"--scale {scale} does not fit net {model.definition} "
                             f"({err})") from None
    comm.barrier()                      # every rank has checked everything before any writes
    if comm.size > 1:                   # shard k to rank k mod R, whatever is already done
        size = next(iter(writers.values())).shard_size
        todo = [(a, b) for a, b in todo if (a // size) % comm.size == comm.rank]
        order = np.array([i for a, b in todo for i in range(a, b)], dtype=np.int64)

    def make(img, rng):
        return view_input(img, view, scale, mean, pixel_scale)

    t0 = time.perf_counter()
    shapes = {int(i): input_shape(dataset, int(i), view, scale) for i in order}
    steps = plan_batches(todo, shapes, batch)
    work = np.array([i for kind_, what in steps if kind_ == "run" for i in what], dtype=np.int64)
    loader = BatchLoader(_Indexed(dataset, skip_unreadable), work, 1, make, seed=(0,),
                         workers=workers, prefetch=max(4, 2 * batch))
    bar = tqdm(total=len(order), desc=f"features {view} s={scale}", unit="img",
               disable=not progress)
    spill = _Spill(os.path.dirname(paths[0]))
    dims = {}                       # layer -> feature length, once a batch has run
    nets_kept = {}                  # the one net alive: (h, w) -> net

    def run(items):
        """Forward the loaded (index, input) pairs, equal shapes together (an input whose
        shape differs from the planned one, e.g. a header that misled, gets its own batch),
        and keep each image's features on disk until its shard is written."""
        by_shape = {}
        for i, x in items:
            by_shape.setdefault(x.shape, []).append((i, x))
        for shape, group in by_shape.items():
            for k in range(0, len(group), batch):
                part = group[k:k + batch]
                if shape[1:] not in nets_kept:
                    nets_kept.clear()           # free the last net's buffers first
                    nets_kept[shape[1:]] = fresh_net(model, batch, shape[1:])
                feats = taps(nets_kept[shape[1:]], np.stack([x for _, x in part]))
                dims.update((layer, feats[layer].shape[1]) for layer in layers)
                for j, (i, _) in enumerate(part):
                    spill.put(i, [feats[layer][j] for layer in layers])

    def write(a, b):
        """Write shard [a, b) of every cache still missing it: rows read back from the
        spill; an image that was not computed (skipped as unreadable) is a zero row
        flagged invalid."""
        rows = {i: spill.take(i) for i in range(a, b) if i in spill}
        for k, (layer, w) in enumerate(writers.items()):
            if os.path.exists(w._shard_path(a)) or w.complete:
                continue
            dim = dims[layer] if layer in dims else _dim(model, taps, layer, scale)
            feats = np.zeros((b - a, dim), dtype=np.float32)
            valid = np.zeros(b - a, dtype=bool)
            for i, v in rows.items():
                feats[i - a], valid[i - a] = v[k], True
            w.write(a, feats, valid)

    loaded = iter(loader)
    try:
        nxt = next(loaded, None)
        position = 0                # of the next image in `work`
        for kind_, what in steps:
            if kind_ == "write":
                write(*what)
                continue
            items = []
            for i in what:          # the loader yields `work` in order, less skipped images
                if nxt is not None and nxt[0] == position:
                    items.append((i, nxt[1][0]))
                    nxt = next(loaded, None)
                    bar.update(1)
                position += 1
            run(items)
    finally:
        loaded.close()              # stops the loader's threads on an error
        bar.close()
        spill.close()
        nets_kept.clear()
    computed = comm.allreduce_sum(np.array([len(order)], dtype=np.float64))   # waits for all
    computed = int(computed[0])
    seconds = time.perf_counter() - t0
    if comm.is_root:
        paths = {layer: w.finish() for layer, w in writers.items()}
    else:
        paths = {layer: w.path for layer, w in writers.items()}
    comm.barrier()                      # the caches are whole when any rank returns
    return {"paths": paths, "images": len(ids), "computed": computed, "seconds": seconds,
            "images_per_s": computed / seconds if seconds > 0 and computed else None,
            "skipped": loader.skipped}


def input_shape(dataset, i, view, s):
    """(h, w) of image i's input in a view at scale s, known before decoding: s x s for crop
    and warp; for full, the shorter side resized to s (Sec. 3.2) from the file's header,
    its EXIF orientation applied as the reader does. None when the header cannot be read
    (the loader then reports the image). Only the batching plan uses it: each batch is
    regrouped by the inputs' real shapes before the forward pass."""
    if view != "full":
        return (int(s), int(s))
    try:
        with Image.open(image_path(dataset, i)) as img:
            h, w = img.height, img.width
            if img.getexif().get(0x0112) in (5, 6, 7, 8):    # a quarter turn: sides swap
                h, w = w, h
        return min_side_shape(h, w, s)
    except Exception:                                        # unreadable: reported later
        return None


# Pending shards whose images of a shape run together, in consecutive batches, when the
# first shard among them needs that shape (plan_batches): a net is rebuilt, and its buffers
# allocated again, at every change of input shape, which makes ZF-5's batches at 224 about
# a quarter slower (measured: 4.8 against 6.0 images/s at batch 16, one BLAS thread).
AHEAD_SHARDS = 8


def plan_batches(todo, shapes, batch, ahead=AHEAD_SHARDS):
    """The order of the work: a list of ("run", [indices]) and ("write", (a, b)) steps.

    todo: the pending shard ranges (a, b) in row order; shapes: {index: input shape}. The
    shards are finished in row order. For shard (a, b), each of its images not yet run
    starts a run of its shape: every image of that shape not yet run in this shard and the
    next ahead - 1 pending shards, in consecutive batches of `batch`, the last one filled up
    with the next images of that shape in row order wherever they are in the split; then
    the shard is written. So equal shapes are batched together across the whole split, a
    shape's batches come one after another (the net is kept), every image runs once, and
    shards are written in order as soon as they can be: a killed run loses only the images
    computed ahead of their shard (minispp.storage.feature_cache resumes the rest).
    Batches are never padded: equal input shapes only (module docstring)."""
    queues = {}
    for a, b in todo:
        for i in range(a, b):
            queues.setdefault(shapes.get(i), []).append(i)
    front = dict.fromkeys(queues, 0)            # per shape: how many have run
    done, steps = set(), []
    for t, (a, b) in enumerate(todo):
        horizon = todo[min(t + ahead, len(todo)) - 1][1]
        for i in range(a, b):
            if i in done:
                continue
            key = shapes.get(i)
            q, lo = queues[key], front[key]
            assert q[lo] == i                   # the earliest of its shape not yet run
            n = bisect.bisect_left(q, horizon, lo) - lo
            n = min(len(q) - lo, -(-n // batch) * batch)
            for k in range(lo, lo + n, batch):
                steps.append(("run", q[k:min(k + batch, lo + n)]))
            done.update(q[lo:lo + n])
            front[key] = lo + n
        steps.append(("write", (a, b)))
    return steps


class _Spill:
    """The features of images computed before their shard is written (every computed row,
    until the shard's write reads it back), in an unnamed temporary file beside the cache:
    memory holds one batch and one shard whatever the number of images, and a killed run
    leaves no file behind. Rows are the layers' vectors one after another, in fixed-size
    slots that are reused once read."""

    def __init__(self, folder):
        self.folder, self.file = folder, None
        self.slots, self.free, self.used = {}, [], 0
        self.sizes = None

    def __contains__(self, i):
        return i in self.slots

    def put(self, i, vectors):
        row = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in vectors])
        if self.file is None:
            os.makedirs(self.folder, exist_ok=True)     # the first shard would make it anyway
            self.file = tempfile.TemporaryFile(dir=self.folder, prefix=".minispp-features-")
            self.sizes = [int(np.size(v)) for v in vectors]
        slot = self.free.pop() if self.free else self.used
        self.used = max(self.used, slot + 1)
        data = row.tobytes()
        os.pwrite(self.file.fileno(), data, slot * len(data))
        self.slots[i] = slot

    def take(self, i):
        """The vectors stored for image i (its slot is freed)."""
        slot = self.slots.pop(i)
        nbytes = 4 * sum(self.sizes)
        data = os.pread(self.file.fileno(), nbytes, slot * nbytes)
        if len(data) != nbytes:
            raise OSError(f"short read from the feature spill file ({len(data)} of {nbytes} bytes)")
        self.free.append(slot)
        row = np.frombuffer(data, dtype=np.float32)
        return np.split(row, np.cumsum(self.sizes)[:-1])

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _dim(model, taps, layer, scale):
    """Feature length of a layer when a whole shard was unreadable (no vector to copy)."""
    x = np.zeros((1, 3, scale, scale), dtype=np.float32)
    return taps(fresh_net(model, 1, (scale, scale)), x)[layer].shape[1]


def fresh_net(model, batch, size):
    """The model's net for (batch, 3, h, w) input, sharing its parameters, but not one of
    the instances the model keeps (nets.Model.instance, docs/design.md "Net and Model"): a
    net holds the activations and buffers of its last batch, so the extraction keeps only
    the net it runs, and its memory is bounded by the batch size at the largest input,
    however many input sizes the images have."""
    h, w = size
    net = Net([s.make() for s in model.specs], name=f"{model.definition}@{h}x{w}")
    try:
        net.setup((int(batch), 3, int(h), int(w)), model.params, model.rng)
    except ValueError:
        model.instance(batch, size)     # raises the model's own explanation where it has one
        raise
    return net


def output_paths(out, layers, scales):
    """{(layer, scale): path}: out itself for one layer and one scale, else
    <out stem>-<layer>-s<scale>.h5 for each."""
    if len(layers) == 1 and len(scales) == 1:
        return {(layers[0], scales[0]): out}
    stem = out[:-3] if out.endswith(".h5") else out
    return {(layer, s): f"{stem}-{layer}-s{s}.h5" for layer in layers for s in scales}


def extract_scales(checkpoint, kind, root, split, layers, scales, view, out, batch=16, workers=2,
                   progress=True, command=None, skip_unreadable=False):
    """`minispp features`: every (layer, scale) cache of a split, one forward pass per scale
    filling every layer's cache. Every argument and output is checked before anything is
    written. Returns [(scale, extract's result, {layer: path})]."""
    from minispp.storage.feature_cache import check_output
    scales = [int(s) for s in scales]
    if len(set(scales)) != len(scales):
        raise ValueError(f"a --scale is given twice: {','.join(map(str, scales))}")
    for s in scales:
        check_arguments(layers, s, view, batch, workers)
    paths = output_paths(out, layers, scales)
    for path in paths.values():
        check_output(path)
    done = []
    for s in scales:
        outs = {layer: paths[layer, s] for layer in layers}
        r = extract(checkpoint, kind, root, split, layers, s, view, outs, batch=batch,
                    workers=workers, progress=progress, command=command,
                    skip_unreadable=skip_unreadable)
        done.append((s, r, outs))
    return done
