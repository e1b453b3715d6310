"""Selective search (determinism, recall on generated scenes, the grouping order) and the
proposal files of other pipelines (R-CNN .mat in both cell layouts, .npz, .npy, HDF5)."""
import h5py
import numpy as np
import pytest
from scipy.io import savemat

import minispp.selective_search as ss
from minispp.embedded import make_voc
from minispp.proposals import ProposalCache, load_proposals, recall
from minispp.voc import VOCDataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return VOCDataset(make_voc(tmp_path_factory.mktemp("ss") / "voc", seed=3, trainval=3, test=1),
                      "trainval")


def test_selective_search_is_deterministic_and_finds_the_objects(scenes):
    props, gts = [], []
    for i in range(len(scenes)):
        img, _ = scenes.load(i)
        a = ss.selective_search(img, seed=0)
        assert 300 <= len(a) <= 2000
        assert np.array_equal(a, ss.selective_search(img, seed=0))
        if i == 0:
            assert not np.array_equal(a, ss.selective_search(img, seed=1))   # another ranking
        h, w = img.shape[:2]
        assert (a[:, 0] >= 0).all() and (a[:, 2] <= w - 1).all() and (a[:, 3] <= h - 1).all()
        assert len(np.unique(a, axis=0)) == len(a)
        props.append(a)
        gts.append(scenes.object_boxes(i)[0])
    r = recall(props, gts)
    assert r[0.5] >= 0.9 and r[0.7] >= 0.6
    assert recall([p[:1] for p in props], gts)[0.5] < r[0.5]            # recall needs many


def test_grouping_merges_neighbours_up_to_the_whole_image():
    labels = np.repeat(np.array([[0, 0, 1, 1, 1, 2]]), 4, axis=0)       # three vertical stripes
    n = 3
    sizes = np.bincount(labels.ravel()).astype(float)
    boxes = np.array([[0, 0, 1, 3], [2, 0, 4, 3], [5, 0, 5, 3]], float)
    colour = np.eye(3)                        # all different: size and fill decide
    pairs = ss._adjacent_pairs(labels)
    assert pairs.tolist() == [[0, 1], [1, 2]]
    made = ss.group(sizes, boxes, colour, colour, pairs, float(labels.size), "SF")
    assert len(made) == 2 * n - 1
    # sizes 8, 12, 4: the pair (1, 2) is smaller (16 < 20) and fills its box: it merges first
    np.testing.assert_array_equal(made[3], [2, 0, 5, 3])
    np.testing.assert_array_equal(made[4], [0, 0, 5, 3])
    with pytest.raises(ValueError, match=r"RGB image \(H, W, 3\)"):
        ss.selective_search(np.zeros((5, 5)))


def test_rcnn_mat_files_in_both_cell_layouts(tmp_path):
    b1 = np.array([[11, 21, 40, 60], [1, 1, 5, 5]], float)     # [y1 x1 y2 x2], 1-based
    b2 = np.array([[2, 3, 4, 5]], float)
    for shape in ((2, 1), (1, 2)):
        images = np.empty(shape, dtype=object)
        boxes = np.empty(shape, dtype=object)
        images.flat[:] = ["000001", "000002"]
        boxes.flat[0], boxes.flat[1] = b1, b2
        path = tmp_path / f"ss{shape[0]}.mat"
        savemat(path, {"images": images, "boxes": boxes})
        got = load_proposals(path)
        assert sorted(got) == ["000001", "000002"]
        np.testing.assert_array_equal(got["000001"], [[20, 10, 59, 39], [0, 0, 4, 4]])
        np.testing.assert_array_equal(got["000002"], [[2, 1, 4, 3]])
    savemat(tmp_path / "bad.mat", {"rects": b1})
    with pytest.raises(ValueError, match="no 'boxes' and 'images'"):
        load_proposals(tmp_path / "bad.mat")


def test_npz_npy_and_hdf5_proposals(tmp_path):
    d = {"a": np.array([[0, 0, 9, 9]], float), "b": np.array([[1, 2, 3, 4], [5, 5, 8, 9]], float)}
    np.savez(tmp_path / "p.npz", **d)
    np.save(tmp_path / "p.npy", np.array(d, dtype=object), allow_pickle=True)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        for k, v in d.items():
            f[k] = v
    for name in ("p.npz", "p.npy", "p.h5"):
        got = load_proposals(tmp_path / name)
        assert sorted(got) == ["a", "b"] and np.array_equal(got["b"], d["b"])
    np.savez(tmp_path / "bad.npz", a=np.array([[5, 0, 1, 9]]))
    with pytest.raises(ValueError, match="bad.npz, image a: row 0"):
        load_proposals(tmp_path / "bad.npz")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unknown proposal file type"):
        load_proposals(tmp_path / "x.txt")


def test_proposal_cache_computes_once(tmp_path, monkeypatch):
    calls = []

    def fake(img, seed, top):
        calls.append(seed)
        return np.array([[0, 0, 4, 4], [1, 1, 3, 3]], float)
    monkeypatch.setattr(ss, "selective_search", fake)
    cache = ProposalCache(tmp_path / "props", seed=5)
    img = np.zeros((8, 8, 3), np.uint8)
    a = cache.get("000001", lambda: img)
    b = ProposalCache(tmp_path / "props", seed=5).get("000001", lambda: img)
    assert calls == [5] and np.array_equal(a, b)
    ProposalCache(tmp_path / "props", seed=6).get("000001", lambda: img)    # other seed: redone
    assert calls == [5, 6]


def test_fill_in_worker_processes_stores_what_one_process_computes(scenes, tmp_path):
    ids = scenes.ids[:2]
    paths = [scenes.image_path(i) for i in range(2)]
    cache = ProposalCache(tmp_path / "props", seed=2, top=500)
    done = []
    cache.fill(ids, paths, jobs=2, progress=done.append)
    assert done == [1, 1]
    for i, image_id in enumerate(ids):
        want = ss.selective_search(scenes.load(i)[0], seed=2, top=500)
        got = cache.get(image_id, lambda: pytest.fail("fill left an image to compute"))
        np.testing.assert_array_equal(got, want)
    cache.fill(ids, paths, jobs=2, progress=done.append)     # nothing missing: nothing runs
    assert done == [1, 1]
