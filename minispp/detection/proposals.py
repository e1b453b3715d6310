"""Region proposals: computed by selective search and cached per image in HDF5, or loaded
from the files other pipelines wrote (paper Sec. 4.1).

Cache: a folder of ``<image id>.h5`` files, each with ``/boxes`` (M, 4) float64 (x1, y1, x2,
y2, 0-based inclusive pixels) and the method and seed as attributes, each written to a
temporary file and renamed: a killed run leaves whole files only, and a rerun computes the
missing ones.

Precomputed proposals:
  R-CNN's .mat files (e.g. selective_search_data/voc_2007_test.mat): ``images`` (a cell of
    image ids) and ``boxes`` (a cell of (M, 4) arrays, 1-based [y1 x1 y2 x2]); either cell
    orientation (1 x N or N x 1) is read.
  .npz: one (M, 4) array per image id, 0-based [x1 y1 x2 y2].
  .npy: one structured array with a row per box and two fields, ``image`` (the image id, a
    unicode or byte string) and ``box`` (4 numbers, 0-based [x1 y1 x2 y2]), e.g.
        rows = [(image_id, box) for image_id, boxes in d.items() for box in boxes]
        np.save("p.npy", np.array(rows, dtype=[("image", "U64"), ("box", "f8", (4,))]))
    (an image with no boxes cannot be written this way: use .npz for that).
  .h5 / .hdf5: one (M, 4) dataset per image id, 0-based [x1 y1 x2 y2].

No file is ever unpickled: NumPy files are read with allow_pickle=False, so a pickled
{image id: boxes} dictionary (what some pipelines save as .npy) is refused with a message
saying how to convert it; unpickling a file can run any code its author chose. A file that
is not one of these layouts (a checkpoint, arrays that are not (M, 4)) is an error naming it.

A damaged cache file (a truncated or overwritten ``<image id>.h5``) is an error naming it;
deleting it and running again computes it anew. Image ids become the cache's file names, so
ProposalCache.path refuses one that is not a plain file name (minispp.data.names).
"""
import os

import h5py
import numpy as np

from minispp.detection.boxes import as_boxes, iou
from minispp.storage.checkpoint import atomic_h5
from minispp.data.names import inside


def _from_rcnn(b, path, image_id):
    b = np.asarray(b)
    if b.dtype.kind not in "iuf" or b.size % 4:
        raise ValueError(f"{path}: image {image_id!r} holds a {b.dtype} array of shape "
                         f"{b.shape}, not (M, 4) boxes")
    b = b.astype(np.float64).reshape(-1, 4)
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


def _box_array(a, path, image_id):
    """(M, 4) float64 boxes from one stored array, or ValueError naming the file and image."""
    a = np.asarray(a)
    if a.dtype.kind not in "iuf" or not (a.size == 0 or (a.ndim == 2 and a.shape[1] == 4)):
        raise ValueError(f"{path}: image {image_id!r} holds a {a.dtype} array of shape {a.shape}, "
                         f"not (M, 4) boxes; is {path} a proposal file?")
    return as_boxes(a, f"{path}, image {image_id}")


PICKLE_ADVICE = ("minispp never unpickles a file (it can run any code). Convert a pickled "
                 "{image id: boxes} dictionary you trust with np.savez(NAME.npz, **d)")


def _np_load(path):
    """np.load without pickles: an ndarray or an open NpzFile; ValueError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path} is pickled data or not a NumPy file at all; "
                             f"{PICKLE_ADVICE}") from None
        raise ValueError(f"cannot read {path} as a NumPy file: {err}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path} as a NumPy file: {err}") from None


def _from_npz(z, path):
    out = {}
    with z:
        for k in z.files:
            try:
                a = z[k]
            except ValueError as err:
                if "pickle" in str(err).lower():
                    raise ValueError(f"{path}: array {k!r} is a pickled object array; "
                                     f"{PICKLE_ADVICE}") from None
                raise ValueError(f"{path}: array {k!r} cannot be read: {err}") from None
            except Exception as err:                   # zipfile and zlib raise several kinds
                raise ValueError(f"{path}: array {k!r} cannot be read ({err}); the file is "
                                 f"damaged") from None
            out[k] = _box_array(a, path, k)
    return out


def _from_npy_rows(a, path):
    """{image id: boxes} from the structured .npy layout of the module doc."""
    names = a.dtype.names or ()
    if (a.ndim != 1 or "image" not in names or "box" not in names
            or a.dtype["image"].kind not in "US" or a.dtype["box"].shape != (4,)
            or a.dtype["box"].base.kind not in "iuf"):
        raise ValueError(f"{path} holds a {a.dtype} array of shape {a.shape}; a .npy proposal "
                         f"file is a 1-D structured array with fields image (string) and box "
                         f"(4 numbers), one row per box (or use .npz: one (M, 4) array per image)")
    ids = a["image"]
    if ids.dtype.kind == "S":
        try:
            ids = np.char.decode(ids, "utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: an image id is not UTF-8 ({err})") from None
    ids = np.asarray(ids, dtype=str)
    boxes = np.asarray(a["box"], dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    unique, first = np.unique(ids[order], return_index=True)
    return {str(u): as_boxes(boxes[rows], f"{path}, image {u}")
            for u, rows in zip(unique, np.split(order, first[1:]))}


def _from_hdf5(path):
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path} as HDF5: {err}") from None
    out = {}
    with f:
        for k in f.keys():
            obj = f.get(k)
            if not isinstance(obj, h5py.Dataset):
                raise ValueError(f"{path} is not a proposal file: /{k} is a group, where each "
                                 f"entry should be one (M, 4) dataset per image id (is it a "
                                 f"checkpoint or a cache?)")
            if obj.dtype.kind not in "iuf" or not (obj.size == 0 or (obj.ndim == 2 and obj.shape[1] == 4)):
                raise ValueError(f"{path} is not a proposal file: /{k} is a {obj.dtype} dataset "
                                 f"of shape {obj.shape}, not (M, 4) boxes")
            try:
                a = obj[...]
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: /{k} cannot be read ({err}); the file is damaged") from None
            out[k] = _box_array(a, path, k)
    return out


def load_proposals(path):
    """{image id: (M, 4) boxes} from a .mat, .npz, .npy or HDF5 file (see the module doc).
    Nothing is unpickled; a file of another layout is a ValueError naming it."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise ValueError(f"proposal file {path} does not exist or is not a file")
    if ext == ".mat":
        out = load_rcnn_mat(path)
    elif ext in (".npz", ".npy"):
        z = _np_load(path)
        out = _from_npz(z, path) if isinstance(z, np.lib.npyio.NpzFile) else _from_npy_rows(z, path)
    elif ext in (".h5", ".hdf5"):
        out = _from_hdf5(path)
    else:
        raise ValueError(f"unknown proposal file type {path}: expected .mat, .npz, .npy or .h5")
    if not out:
        raise ValueError(f"proposal file {path} holds no proposals")
    return out


class ProposalCache:
    """Per-image HDF5 proposal files in a folder; get(image_id, image) computes (selective
    search, fast mode) and stores what is missing."""

    def __init__(self, folder, seed=0, top=2000, precomputed=None):
        self.folder, self.seed, self.top = os.fspath(folder), int(seed), int(top)
        self.precomputed = load_proposals(precomputed) if precomputed else None
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot make the proposal cache folder {self.folder}: {err}") from None

    def path(self, image_id):
        """folder/<image id>.h5; an id that is not a plain file name is refused (BadName)."""
        return inside(self.folder, image_id, ".h5")

    def get(self, image_id, load_image):
        """Boxes of one image; load_image() gives its uint8 RGB pixels when needed."""
        if self.precomputed is not None:
            if image_id not in self.precomputed:
                raise ValueError(f"the precomputed proposals have no image {image_id!r}")
            return self.precomputed[image_id]
        boxes = self._stored(image_id)
        if boxes is None:
            from minispp.detection.selective_search import selective_search
            boxes = selective_search(load_image(), seed=self.seed, top=self.top)
            self._store(image_id, boxes)
        return boxes

    def _stored(self, image_id):
        """The cached boxes, None when absent or made with another seed or top; a damaged
        file is a ValueError naming it and saying how to recover."""
        p = self.path(image_id)
        if not os.path.exists(p):
            return None
        try:
            with h5py.File(p, "r") as f:
                if (f.attrs.get("seed"), f.attrs.get("top")) != (self.seed, self.top):
                    return None
                boxes = f["boxes"][...]
            if boxes.dtype.kind != "f" or not (boxes.ndim == 2 and boxes.shape[1] == 4):
                raise ValueError(f"/boxes is a {boxes.dtype} array of shape {boxes.shape}")
            return boxes
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise ValueError(f"proposal cache {p} is damaged ({err}); delete it and run again "
                             f"to compute it anew") from None

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
            from minispp.data.imagefolder import load_rgb
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
    """Selective search on one image file (a worker process's task). Errors come back as
    plain ValueError (BadImage's own arguments do not survive the trip between processes)."""
    from minispp.data.imagefolder import load_rgb
    from minispp.detection.selective_search import selective_search
    try:
        return selective_search(load_rgb(path), seed=seed, top=top)
    except ValueError as err:
        raise ValueError(str(err)) from None


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
