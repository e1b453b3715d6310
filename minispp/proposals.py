"""Region proposals: computed by selective search and cached per image in HDF5, or loaded
from the files other pipelines wrote (SPEC.md §6).

Cache: a folder of ``<image id>.h5`` files, each with ``/boxes`` (M, 4) float64 (x1, y1, x2,
y2, 0-based inclusive pixels) and the method and seed as attributes, each written to a
temporary file and renamed: a killed run leaves whole files only, and a rerun computes the
missing ones.

Precomputed proposals:
  R-CNN's .mat files (e.g. selective_search_data/voc_2007_test.mat): ``images`` (a cell of
    image ids) and ``boxes`` (a cell of (M, 4) arrays, 1-based [y1 x1 y2 x2]); either cell
    orientation (1 x N or N x 1) is read.
  .npz: one (M, 4) array per image id, 0-based [x1 y1 x2 y2].
  .npy: a pickled {image id: (M, 4)} dictionary, 0-based [x1 y1 x2 y2].
  .h5 / .hdf5: one dataset per image id, 0-based [x1 y1 x2 y2].
"""
import os

import h5py
import numpy as np

from .boxes import as_boxes, iou
from .checkpoint import atomic_h5


def _from_rcnn(b, path, image_id):
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return as_boxes(b[:, [1, 0, 3, 2]] - 1, f"{path}, image {image_id}")


def load_rcnn_mat(path):
    """{image id: (M, 4) 0-based x1 y1 x2 y2} from an R-CNN selective search .mat file."""
    from scipy.io import loadmat
    try:
        m = loadmat(path)
    except Exception as err:                           # scipy raises several kinds
        raise ValueError(f"cannot read {path} as a MATLAB file: {err}") from None
    if "boxes" not in m or "images" not in m:
        raise ValueError(f"{path} has no 'boxes' and 'images' variables (found "
                         f"{sorted(k for k in m if not k.startswith('__'))})")
    boxes = np.asarray(m["boxes"], dtype=object).ravel()
    images = np.asarray(m["images"], dtype=object).ravel()
    if len(boxes) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(boxes)} box arrays")
    out = {}
    for name, b in zip(images, boxes):
        image_id = str(np.asarray(name).ravel()[0]) if np.asarray(name).size else ""
        out[image_id] = _from_rcnn(b, path, image_id)
    return out


def load_proposals(path):
    """{image id: (M, 4) boxes} from a .mat, .npz, .npy or HDF5 file (see the module doc)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise ValueError(f"proposal file {path} does not exist")
    if ext == ".mat":
        return load_rcnn_mat(path)
    if ext == ".npz":
        with np.load(path) as z:
            return {k: as_boxes(z[k], f"{path}, image {k}") for k in z.files}
    if ext == ".npy":
        d = np.load(path, allow_pickle=True)
        if d.dtype != object or d.shape != ():
            raise ValueError(f"{path}: expected a pickled {{image id: boxes}} dictionary")
        return {str(k): as_boxes(v, f"{path}, image {k}") for k, v in d.item().items()}
    if ext in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            return {k: as_boxes(f[k][...], f"{path}, image {k}") for k in f.keys()}
    raise ValueError(f"unknown proposal file type {path}: expected .mat, .npz, .npy or .h5")


class ProposalCache:
    """Per-image HDF5 proposal files in a folder; get(image_id, image) computes (selective
    search, fast mode) and stores what is missing."""

    def __init__(self, folder, seed=0, top=2000, precomputed=None):
        self.folder, self.seed, self.top = os.fspath(folder), int(seed), int(top)
        self.precomputed = load_proposals(precomputed) if precomputed else None
        os.makedirs(self.folder, exist_ok=True)

    def path(self, image_id):
        return os.path.join(self.folder, f"{image_id}.h5")

    def get(self, image_id, load_image):
        """Boxes of one image; load_image() gives its uint8 RGB pixels when needed."""
        if self.precomputed is not None:
            if image_id not in self.precomputed:
                raise ValueError(f"the precomputed proposals have no image {image_id!r}")
            return self.precomputed[image_id]
        boxes = self._stored(image_id)
        if boxes is None:
            from .selective_search import selective_search
            boxes = selective_search(load_image(), seed=self.seed, top=self.top)
            self._store(image_id, boxes)
        return boxes

    def _stored(self, image_id):
        p = self.path(image_id)
        if os.path.exists(p):
            with h5py.File(p, "r") as f:
                if (f.attrs.get("seed"), f.attrs.get("top")) == (self.seed, self.top):
                    return f["boxes"][...]
        return None

    def _store(self, image_id, boxes):
        def write(f):
            f["boxes"] = boxes
            f.attrs["method"] = "selective search (fast)"
            f.attrs["seed"], f.attrs["top"] = self.seed, self.top
        atomic_h5(self.path(image_id), write)

    def fill(self, image_ids, image_paths, jobs=None, progress=None):
        """Compute the missing proposals of many images in `jobs` processes (default: every
        core; selective search runs on one). Each image is stored as soon as it is done, so a
        killed run keeps what it finished. progress(n) is called after each stored image."""
        if self.precomputed is not None:
            return
        todo = [(i, p) for i, p in zip(image_ids, image_paths) if self._stored(i) is None]
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
        if jobs <= 1:
            from .imagefolder import load_rgb
            for image_id, path in todo:
                self.get(image_id, lambda path=path: load_rgb(path))
                if progress:
                    progress(1)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        # fork where there is one: spawn would re-run the caller's script in every worker
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
            futures = {pool.submit(_search_file, path, self.seed, self.top): image_id
                       for image_id, path in todo}
            for fut in as_completed(futures):
                self._store(futures[fut], fut.result())
                if progress:
                    progress(1)


def _search_file(path, seed, top):
    """Selective search on one image file (a worker process's task)."""
    from .imagefolder import load_rgb
    from .selective_search import selective_search
    return selective_search(load_rgb(path), seed=seed, top=top)


def recall(proposals, ground_truth, thresholds=(0.5, 0.7)):
    """{threshold: fraction of ground-truth boxes covered by a proposal at IoU >= t}.
    proposals and ground_truth: lists of (M, 4) arrays, one per image."""
    best = []
    for p, g in zip(proposals, ground_truth):
        g = np.asarray(g, dtype=np.float64).reshape(-1, 4)
        if len(g) == 0:
            continue
        best.append(iou(g, p).max(axis=1) if len(p) else np.zeros(len(g)))
    best = np.concatenate(best) if best else np.zeros(0)
    return {t: float((best >= t).mean()) if best.size else float("nan") for t in thresholds}
