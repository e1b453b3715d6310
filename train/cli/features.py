"""`minispp features`, `svm`, `cache info` and `features-compare`: full-image features and
linear SVMs (paper Sec. 3.2-3.3), each calling its library function in train.features or
minispp.storage."""

import json
import sys


from train.cli.common import add_device_argument, ints

EXAMPLES = {
    "features": """examples:
  minispp features --checkpoint runs/zf5/best.h5 --voc data/embedded-voc --split trainval \
      --layer fc7 --scale 224 --view full --out runs/features/trainval-fc7.h5
  minispp features --checkpoint runs/zf5/best.h5 --voc /data/VOCdevkit --split test \
      --layer pool5,fc7 --scale 224,392 --out runs/voc/test.h5     # -> test-<layer>-s<scale>.h5
  minispp features --checkpoint runs/zf5/best.h5 --caltech /data/caltech101 --split all \
      --layer spp --scale 224 --out runs/caltech/spp.h5
  minispp features --checkpoint runs/zf5/best.h5 --folder data/embedded --split val --layer fc6 --out val.h5
A killed extraction resumes when the same command is run again; a cache made by another
checkpoint or with other arguments is refused.
  mpiexec -n 2 minispp features ... --out runs/features/trainval-fc7.h5   # shards split over 2 ranks""",
    "svm": """examples:
  minispp svm --train runs/features/trainval-fc7.h5 --test runs/features/test-fc7.h5 --json r.json
  minispp svm --train runs/caltech/spp.h5 --json r.json        # Caltech101: 10 splits of one cache
  minispp svm --train train.h5 --test val.h5 --C 1             # fixed C instead of the search""",
    "features-compare": """examples:
  minispp features-compare --checkpoint runs/zf5/best.h5 --voc data/embedded-voc --out runs/features
Extracts (or reuses) caches for crop/warp/full at 224 and full at 392, for pool5, spp, fc6 and
fc7, trains the SVMs and writes OUT/results.md and OUT/results.json.""",
}

def register(sub, fmt):
    """Add this pipeline's subcommands to the parser."""
    f = sub.add_parser("features", help="full-image features of a data set split into HDF5 caches",
                       epilog=EXAMPLES["features"], formatter_class=fmt)
    f.add_argument("--checkpoint", required=True)
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc", help="VOC devkit (VOCdevkit/VOC2007 or a folder holding it)")
    src.add_argument("--caltech", help="Caltech101 (101_ObjectCategories or its parent)")
    src.add_argument("--folder", help="class folders: DIR/<split>/<class>/<images>")
    f.add_argument("--split", default=None, help="trainval/test (VOC), all (Caltech101), train/val (folder)")
    f.add_argument("--layer", default="fc7", help="pool5, spp, fc6, fc7, or a comma list")
    f.add_argument("--scale", default="224", help="shorter side s in pixels, or a comma list (224,392)")
    f.add_argument("--view", default="full", choices=["full", "crop", "warp"])
    f.add_argument("--out", required=True, help="cache file (.h5); with several layers or scales "
                   "the stem of <stem>-<layer>-s<scale>.h5")
    f.add_argument("--batch", type=int, default=16)
    f.add_argument("--workers", type=int, default=2)
    f.add_argument("--skip-unreadable", action="store_true",
                   help="report a missing or unreadable image and keep it as a zero row flagged "
                        "invalid (left out by `minispp svm`) instead of stopping with an error")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--distributed", action="store_true",
                   help="split the cache's shards over MPI ranks (default: on when started by mpiexec)")
    add_device_argument(f)
    f.set_defaults(run=cmd_features)

    v = sub.add_parser("svm", help="linear SVMs on feature caches: VOC mAP or accuracy",
                       epilog=EXAMPLES["svm"], formatter_class=fmt)
    v.add_argument("--train", required=True, help="training cache")
    v.add_argument("--test", help="test cache (Caltech101: optional, the same cache)")
    v.add_argument("--json", help="write the result here")
    v.add_argument("--C", type=float, default=None, help="SVM cost; default: chosen on 20%% of the training data")
    v.add_argument("--splits", type=int, default=10, help="Caltech101: number of random splits")
    v.set_defaults(run=cmd_svm)

    ci = sub.add_parser("cache", help="inspect a feature cache",
                        epilog="examples:\n  minispp cache info runs/features/test-fc7.h5",
                        formatter_class=fmt)
    ci.add_argument("action", choices=["info"])
    ci.add_argument("file")
    ci.set_defaults(run=cmd_cache)

    fc = sub.add_parser("features-compare", help="full vs crop vs warp, pool5/spp/fc6/fc7, 224 vs 392",
                        epilog=EXAMPLES["features-compare"], formatter_class=fmt)
    fc.add_argument("--checkpoint", required=True)
    fc.add_argument("--voc", required=True)
    fc.add_argument("--out", required=True)
    fc.add_argument("--train-split", default="trainval")
    fc.add_argument("--test-split", default="test")
    fc.add_argument("--batch", type=int, default=16)
    fc.add_argument("--workers", type=int, default=2)
    fc.add_argument("--skip-unreadable", action="store_true",
                    help="as for `minispp features`: skip missing or unreadable images")
    fc.add_argument("--quiet", action="store_true")
    fc.set_defaults(run=cmd_features_compare)

def cmd_features(a):
    from train.features.extract import extract_scales
    kind, root = next((k, getattr(a, k)) for k in ("voc", "caltech", "folder") if getattr(a, k))
    split = a.split or {"voc": "trainval", "caltech": "all", "folder": "train"}[kind]
    layers = [v.strip() for v in a.layer.split(",")]
    done = extract_scales(a.checkpoint, kind, root, split, layers, ints(a.scale, "--scale"), a.view,
                          a.out, batch=a.batch, workers=a.workers, progress=not a.quiet,
                          command="minispp " + " ".join(sys.argv[1:]),
                          skip_unreadable=a.skip_unreadable)
    from minispp import distributed
    if not distributed.world().is_root:       # rank 0 reports for every rank
        return 0
    for s, r, paths in done:
        rate = f", {r['images_per_s']:.1f} images/s" if r["images_per_s"] else " (already cached)"
        print(f"s={s} {a.view}: {r['images']} images, {r['computed']} computed in "
              f"{r['seconds']:.1f} s{rate}, {len(r['skipped'])} unreadable"
              + (" (skipped: flagged invalid, zero rows)" if r["skipped"] else ""))
        for layer, path in paths.items():
            print(f"  {layer}: {path}")
    return 0


def cmd_svm(a):
    from train.features.svm import check_writable, classify_caches
    check_writable(a.json)
    r = classify_caches(a.train, a.test, C=a.C, splits=a.splits)
    if r["kind"] == "caltech":
        print(f"Caltech101, {a.splits} splits: mean per-class accuracy "
              f"{r['mean_class_accuracy']:.2%} ± {r['std']:.2%}")
    elif r["kind"] == "voc":
        for c, ap in r["per_class"].items():
            print(f"  {c:>14s}: AP {ap:.1%}")
        print(f"VOC07 classification mAP {r['mAP']:.2%} over {len(r['per_class'])} classes "
              f"(C = {r['C']:g}, {r['seconds']:.1f} s)")
    else:
        print(f"accuracy {r['accuracy']:.2%}, mean per-class accuracy "
              f"{r['mean_class_accuracy']:.2%} (C = {r['C']:g})")
    skipped = sum(len(r.get(k, [])) for k in ("train_skipped", "test_skipped", "skipped"))
    if skipped:
        print(f"{skipped} image(s) skipped as unreadable at extraction were left out "
              f"(listed in the result's *skipped fields)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh, indent=1, default=str)
    return 0


def cmd_cache(a):
    from minispp.storage.feature_cache import cache_info
    print(cache_info(a.file))
    return 0

def cmd_features_compare(a):
    from train.features.compare import run_feature_comparison
    print(run_feature_comparison(a.checkpoint, a.voc, a.out, train_split=a.train_split,
                                 test_split=a.test_split, batch=a.batch, workers=a.workers,
                                 progress=not a.quiet, skip_unreadable=a.skip_unreadable))
    return 0
