"""Full-image feature extraction and the SVM stage (issue: features + SVM).

1. The forward pass that makes a feature: each image of a VOC-layout set resized so its
   shorter side is s, through ZF-5's conv layers, SPP (6,3,2,1), fc6 and fc7 (batch 1, the
   image's own aspect ratio), minispp against the same net in PyTorch CPU with the same
   weights and inputs, same process, same threads. Images/s and the ratio minispp / torch.
2. The whole `minispp features` path (decode, resize, forward, HDF5 cache of fc7 and spp),
   images/s, at the same scales.
3. The SVM stage on fc7 caches of trainval and test: l2-normalize, C search on 20% of the
   training data, one LinearSVC per class, AP: seconds (on synthetic 4096-d features shaped
   like fc7's, so that the figure does not depend on a trained model).

    python benchmarks/bench_features.py --images 24 --scales 224,392
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
from train.features.extract import LayerTaps, extract, view_input  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc", help="a VOC devkit whose trainval split is timed (default: a "
                    "generated embedded one of --images images)")
    ap.add_argument("--checkpoint", help="a ZF-5 checkpoint (default: random weights)")
    ap.add_argument("--images", type=int, default=24, help="images timed per scale")
    ap.add_argument("--scales", default="224,392")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--svm-images", type=int, default=300, help="trainval and test images for the SVM stage")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-features-")
    voc = args.voc or make_voc(os.path.join(tmp, "voc"), trainval=args.images, test=1)
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
        outs = {k: os.path.join(tmp, f"bench-{s}-{k}.h5") for k in ("spp", "fc7")}
        r = extract(ckpt, "voc", voc, "trainval", ["spp", "fc7"], s, "full", outs,
                    progress=False, workers=2)
        print(f"       whole `minispp features` path (decode, resize, forward, HDF5 cache), "
              f"{r['computed']} images: {r['images_per_s']:.2f} img/s")
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
