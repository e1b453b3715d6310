"""Top-1 / top-5 error of a model on a data set with one of the paper's test views (paper
Sec. 3.1.4-3.1.5): the center crop, the standard 10 views (softmax averaged), the full
image, or views taken on the feature maps (10view-fm, multiview: train.classify.multiview)."""
import time

import numpy as np
from tqdm import tqdm

from layers.softmax_loss import softmax
from minispp.data.loader import BatchLoader

from train.classify.multiview import FEATURE_MAP_VIEWS, FeatureMapViews
from train.classify.views import InputMaker


def topk_errors(probs, labels, k=5):
    """(top-1 errors, top-k errors) counted over rows."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    hit1 = top[:, 0] == labels
    hitk = (top == labels[:, None]).any(axis=1)
    return int((~hit1).sum()), int((~hitk).sum())


def evaluate(model, dataset, view, mean, batch=32, workers=2, progress=True, pixel_scale=1.0):
    """{"top1": error, "top5": error, "images": n, "skipped": [...], "view": view,
    "seconds_per_image": wall-clock time of the whole evaluation / n}; the feature-map views
    add "views_per_image" (the mean number of distinct views)."""
    if view == "full" and model.spp is None:
        raise ValueError("the full-image view needs an SPP net: a no-SPP net takes only 224x224")
    if view in FEATURE_MAP_VIEWS:
        return _evaluate_on_maps(model, dataset, view, mean, workers, progress, pixel_scale)
    make = InputMaker(view, mean, pixel_scale=pixel_scale)
    per_batch = 1 if view == "full" else max(1, batch // 10) if view == "10view" else batch
    start = time.perf_counter()
    loader = BatchLoader(dataset, np.arange(len(dataset)), per_batch, make, seed=(0,),
                         workers=workers)
    err1 = err5 = n = 0
    bar = tqdm(total=len(loader), desc=f"test {view}", unit="batch", disable=not progress,
               leave=False)
    for _, x, labels in loader:
        if view == "10view":
            B = x.shape[0]
            flat = x.reshape((B * 10,) + x.shape[2:])
            scores = model.instance(per_batch * 10, flat.shape[2:]).forward(flat, train=False)
            probs = softmax(scores).reshape(B, 10, -1).mean(axis=1)
        else:
            probs = softmax(model.instance(per_batch, x.shape[2:]).forward(x, train=False))
        e1, e5 = topk_errors(probs, labels)
        err1, err5, n = err1 + e1, err5 + e5, n + len(labels)
        bar.update(1)
    bar.close()
    if n == 0:
        raise ValueError(f"no readable image in {dataset.root}")
    return {"view": view, "top1": err1 / n, "top5": err5 / n, "images": n,
            "skipped": loader.skipped, "seconds_per_image": (time.perf_counter() - start) / n}


def _evaluate_on_maps(model, dataset, view, mean, workers, progress, pixel_scale):
    """evaluate() for the views on feature maps: one image at a time (the loader's threads
    decode; each image's scales are resized and run here)."""
    views = FeatureMapViews(model, view, mean, pixel_scale)      # refuses a no-SPP net first
    loader = BatchLoader(dataset, np.arange(len(dataset)), 1, lambda img, rng: img, seed=(0,),
                         workers=workers)
    start = time.perf_counter()
    err1 = err5 = n = count = 0
    for _, x, labels in tqdm(loader, total=len(loader), desc=f"test {view}", unit="img",
                             disable=not progress, leave=False):
        probs = views.view_probabilities(x[0])
        count += len(probs)
        e1, e5 = topk_errors(probs.mean(axis=0)[None], labels)
        err1, err5, n = err1 + e1, err5 + e5, n + 1
    if n == 0:
        raise ValueError(f"no readable image in {dataset.root}")
    return {"view": view, "top1": err1 / n, "top5": err5 / n, "images": n,
            "skipped": loader.skipped, "seconds_per_image": (time.perf_counter() - start) / n,
            "views_per_image": count / n}
