"""Full-image feature extraction and the SVM stage (issue: features + SVM).

1. The forward pass that makes a feature: each image of a VOC-layout set resized so its
   shorter side is s, through ZF-5's conv layers, SPP (6,3,2,1), fc6 and fc7 (batch 1, the
   image's own aspect ratio), minispp against the same net in PyTorch CPU with the same
   weights and inputs, same process, same threads. Images/s and the ratio minispp / torch.
   Then the same inputs batched by equal shape (--batch at most, train.features.extract's
   grouping): images/s against one at a time, side by side.
2. The whole `minispp features` path (decode, resize, forward, HDF5 cache of fc7 and spp),
   images/s, at the same scales, at batch 1 and at --batch in the same run, and the largest
   difference between their features (the GEMMs sum in another order at another batch size).
   The embedded set's sizes are random (300-500 pixels a side), so few images share an input
   shape; --voc-sizes resizes its images to 500x375, 375x500 and 500x333 in turn (sizes
   common in VOC 2007), so that shapes repeat as in the real data.
3. The SVM stage on fc7 caches of trainval and test: l2-normalize, C search on 20% of the
   training data, one LinearSVC per class, AP: seconds (on synthetic 4096-d features shaped
   like fc7's, so that the figure does not depend on a trained model).

    python benchmarks/bench_features.py --images 24 --scales 224,392
    python benchmarks/bench_features.py --images 60 --voc-sizes --batch 16
    python benchmarks/bench_features.py --voc /data/VOCdevkit --checkpoint runs/zf5/best.h5
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # an entry point: before NumPy loads (train.cli)
import time  # noqa: E402

import numpy as np  # noqa: E402
from timing import median_time  # noqa: E402
import nets  # noqa: E402
from minispp.data.embedded import make_voc  # noqa: E402
from minispp.data.voc import VOCDataset  # noqa: E402
from minispp.storage.feature_cache import read_cache  # noqa: E402
from train.features.extract import LayerTaps, extract, fresh_net, view_input  # noqa: E402
from train.features.svm import voc_classification  # noqa: E402

try:
    import torch
    from torch_nets import torch_net
except ImportError:
    torch = None


def random_checkpoint(path, classes):
    model = nets.build("zf5", num_classes=classes, spp=(6, 3, 2, 1), rng=np.random.default_rng(0))
    model.save(path, meta={"config": {"mean": "image"}},
               extras={"mean_image": np.full((3, 224, 224), 115, np.float32),
                       "pixel_std": np.array(60.0)})
    return path


def voc_sized_copy(voc, dest):
    """A copy of a VOC-layout folder whose images are resized to 500x375, 375x500 and 500x333
    (w x h) in turn; the annotations are copied as they are (only the features are timed)."""
    import shutil
    from PIL import Image
    sizes = [(500, 375), (375, 500), (500, 333)]
    shutil.copytree(voc, dest)
    folder = os.path.join(dest, "JPEGImages")
    for k, name in enumerate(sorted(os.listdir(folder))):
        path = os.path.join(folder, name)
        with Image.open(path) as img:
            img.convert("RGB").resize(sizes[k % len(sizes)], Image.BILINEAR).save(path, quality=90)
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc", help="a VOC devkit whose trainval split is timed (default: a "
                    "generated embedded one of --images images)")
    ap.add_argument("--checkpoint", help="a ZF-5 checkpoint (default: random weights)")
    ap.add_argument("--images", type=int, default=24, help="images timed per scale")
    ap.add_argument("--scales", default="224,392")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--svm-images", type=int, default=300, help="trainval and test images for the SVM stage")
    ap.add_argument("--batch", type=int, default=16, help="batch size of the batched rates (against 1)")
    ap.add_argument("--voc-sizes", action="store_true", help="resize the generated images to "
                    "500x375, 375x500 and 500x333 in turn, so that input shapes repeat")
    args = ap.parse_args()
    if args.voc_sizes and args.voc:
        ap.error("--voc-sizes resizes the generated set's images; it is not for --voc")
    tmp = tempfile.mkdtemp(prefix="bench-features-")
    voc = args.voc or make_voc(os.path.join(tmp, "voc"), trainval=args.images, test=1)
    if args.voc_sizes:
        voc = voc_sized_copy(voc, os.path.join(tmp, "voc-sizes"))
    train_ds = VOCDataset(voc, "trainval")
    ckpt = args.checkpoint or random_checkpoint(os.path.join(tmp, "zf5.h5"), len(train_ds.classes))
    model = nets.load(ckpt)
    mean, scale = model.input_normalization()
    taps = LayerTaps(model, ["fc7"])
    ref = None
    if torch is not None:
        upto = [s.name for s in model.specs].index("relu7") + 1
        ref = torch_net(model, upto).eval()
    n = min(args.images, len(train_ds))
    print(f"ZF-5 SPP(6,3,2,1) to fc7, batch 1, full image; {n} images of {train_ds.folder}; "
          f"median of {args.repeat}; torch "
          f"{'%s, %d threads' % (torch.__version__, torch.get_num_threads()) if torch else 'not installed'}")
    for s in (int(v) for v in args.scales.split(",")):
        xs = [view_input(train_ds.load(i)[0], "full", s, mean, scale)[None] for i in range(n)]

        def ours():
            for x in xs:
                taps(model.instance(1, x.shape[2:]), x)
        t_ours = median_time(ours, args.repeat, warmup=1)
        line = f"s={s}: forward to fc7 minispp {n / t_ours:6.2f} img/s"
        if ref is not None:
            ts = [torch.from_numpy(x) for x in xs]

            def theirs():
                with torch.no_grad():
                    for x in ts:
                        ref(x)
            t_ref = median_time(theirs, args.repeat, warmup=1)
            line += f" | torch {n / t_ref:6.2f} img/s | ratio (time) {t_ours / t_ref:.2f}"
        print(line)
        groups = {}
        for x in xs:
            groups.setdefault(x.shape, []).append(x)
        batches = [np.concatenate(g[k:k + args.batch]) for g in groups.values()
                   for k in range(0, len(g), args.batch)]

        def batched():                  # one net alive, as the extraction keeps it
            kept = {}
            for x in batches:
                if x.shape[2:] not in kept:
                    kept.clear()
                    kept[x.shape[2:]] = fresh_net(model, args.batch, x.shape[2:])
                taps(kept[x.shape[2:]], x)
        t_batched = median_time(batched, args.repeat, warmup=1)
        print(f"       batched by equal shape (batch <= {args.batch}, {len(groups)} shapes, "
              f"{len(batches)} passes): {n / t_batched:6.2f} img/s vs one at a time "
              f"{n / t_ours:6.2f} img/s (x{t_ours / t_batched:.2f})")
        rates, feats = {}, {}
        for b in (1, args.batch):
            outs = {k: os.path.join(tmp, f"bench-{s}-b{b}-{k}.h5") for k in ("spp", "fc7")}
            r = extract(ckpt, "voc", voc, "trainval", ["spp", "fc7"], s, "full", outs,
                        batch=b, progress=False, workers=2)
            rates[b] = r["images_per_s"]
            feats[b] = {k: read_cache(p).features for k, p in outs.items()}
        diff = ", ".join(f"{k} {np.abs(feats[args.batch][k] - feats[1][k]).max():.2g} "
                         f"(of max {np.abs(feats[1][k]).max():.3g})" for k in feats[1])
        print(f"       whole `minispp features` path (decode, resize, forward, HDF5 cache), "
              f"{r['computed']} images: batch 1 {rates[1]:.2f} img/s | batch {args.batch} "
              f"{rates[args.batch]:.2f} img/s (x{rates[args.batch] / rates[1]:.2f}); "
              f"max |difference| {diff}")
    # the SVM stage, on features of fc7's size and sparsity (ReLU), 10 classes
    rng = np.random.default_rng(0)
    k = len(train_ds.classes)
    m = args.svm_images

    class FS:
        def __init__(self, x, y):
            self.features, self.labels, self.classes, self.path = x, y, train_ds.classes, "synthetic"
            self.valid, self.ids = np.ones(len(x), bool), [str(i) for i in range(len(x))]
    centers = rng.normal(size=(k, 4096))

    def fake(count):
        c = rng.integers(0, k, count)
        y = np.where(np.eye(k)[c] > 0, 1, -1).astype(np.int8)
        return FS(np.maximum(0, centers[c] + 2.0 * rng.normal(size=(count, 4096))).astype(np.float32), y)
    tr, te = fake(m), fake(m)
    t0 = time.perf_counter()
    res = voc_classification(tr, te)
    print(f"SVM stage, {m} trainval + {m} test images, 4096-d, {k} classes, C searched over "
          f"{len(res['C_search'])} values: {time.perf_counter() - t0:.2f} s (mAP {res['mAP']:.2f} "
          f"on synthetic features)")


if __name__ == "__main__":
    main()
