"""Selective search (determinism, recall on generated scenes, the grouping order) and the
proposal files of other pipelines (R-CNN .mat in both cell layouts, .npz, .npy, HDF5)."""
import h5py
import numpy as np
import pytest
from scipy.io import savemat

import minispp.detection.selective_search as ss
from minispp.data.embedded import make_voc
from minispp.detection.proposals import ProposalCache, load_proposals, recall
from minispp.data.voc import VOCDataset


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
    rows = [(k, b) for k, boxes in d.items() for b in boxes]       # the documented .npy layout
    np.save(tmp_path / "p.npy", np.array(rows, dtype=[("image", "U8"), ("box", "f8", (4,))]))
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


class _Touch:
    """Unpickling this calls open(marker, "w"): the file appears if anything unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_proposal_files_are_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    import pickle
    np.save(tmp_path / "obj.npy", np.array({"a": _Touch(marker)}, dtype=object), allow_pickle=True)
    with open(tmp_path / "raw.npy", "wb") as f:                 # a bare pickle named .npy
        pickle.dump({"a": _Touch(marker)}, f)
    np.savez(tmp_path / "obj.npz", a=np.array([_Touch(marker)], dtype=object))
    for name in ("obj.npy", "raw.npy", "obj.npz"):
        with pytest.raises(ValueError, match=rf"{name}.*never unpickles"):
            load_proposals(tmp_path / name)
        assert not marker.exists()
    # the documented layout with byte-string ids; a plain numeric array is not it
    rows = np.array([(b"000001", [1, 2, 3, 4])], dtype=[("image", "S6"), ("box", "i4", (4,))])
    np.save(tmp_path / "s.npy", rows)
    assert load_proposals(tmp_path / "s.npy")["000001"].tolist() == [[1, 2, 3, 4]]
    np.save(tmp_path / "plain.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="plain.npy holds a float64 array.*fields image"):
        load_proposals(tmp_path / "plain.npy")


def test_files_that_are_not_proposals_are_named(tmp_path, scenes, capsys):
    from tests.helpers import save_small
    ckpt = save_small(tmp_path / "ckpt.h5")
    with pytest.raises(ValueError, match=r"ckpt.h5 is not a proposal file: /extras is a group"):
        load_proposals(ckpt)
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["000001"] = np.zeros(10)
    with pytest.raises(ValueError, match=r"flat.h5 is not a proposal file: /000001 .* shape \(10,\)"):
        load_proposals(tmp_path / "flat.h5")
    np.savez(tmp_path / "flat.npz", a=np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"flat.npz: image 'a' .* shape \(2, 5\)"):
        load_proposals(tmp_path / "flat.npz")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="cannot read .*junk.h5 as HDF5"):
        load_proposals(tmp_path / "junk.h5")
    from train.cli import main
    voc = scenes.folder
    capsys.readouterr()
    assert main(["proposals", "--voc", voc, "--split", "trainval", "--out", str(tmp_path / "o"),
                 "--file", ckpt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ckpt.h5" in err and err.count("\n") == 1
    assert main(["proposals", "--voc", voc, "--out", str(tmp_path / "o"), "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err


def test_a_damaged_cache_file_is_named_with_how_to_recover(tmp_path, monkeypatch):
    monkeypatch.setattr(ss, "selective_search", lambda img, seed, top: np.array([[0, 0, 4, 4]], float))
    cache = ProposalCache(tmp_path / "props")
    img = np.zeros((8, 8, 3), np.uint8)
    cache.get("000001", lambda: img)
    p = tmp_path / "props" / "000001.h5"
    p.write_bytes(p.read_bytes()[:100])                        # truncated
    with pytest.raises(ValueError, match=r"proposal cache .*000001.h5 is damaged .*delete it"):
        ProposalCache(tmp_path / "props").get("000001", lambda: img)
    with pytest.raises(ValueError, match=r"000001.h5 is damaged"):
        ProposalCache(tmp_path / "props").fill(["000001"], ["unused.jpg"], jobs=1)
    p.unlink()                                                 # the advice works
    assert ProposalCache(tmp_path / "props").get("000001", lambda: img).tolist() == [[0, 0, 4, 4]]
    with h5py.File(p, "w") as f:                               # an HDF5 file of another kind
        f.attrs["seed"], f.attrs["top"] = 0, 2000
    with pytest.raises(ValueError, match=r"000001.h5 is damaged"):
        ProposalCache(tmp_path / "props").get("000001", lambda: img)


def test_cache_paths_never_leave_their_folder(tmp_path):
    cache = ProposalCache(tmp_path / "props")
    for bad in ("../x", "a/b", "..", "", "/tmp/x", "a\\b", "a\0b"):
        with pytest.raises(ValueError, match="image id|name"):
            cache.path(bad)
    assert cache.path("2008_000001") == str(tmp_path / "props" / "2008_000001.h5")


def test_an_unreadable_image_in_worker_processes_is_named(tmp_path):
    import pickle
    from minispp.data.imagefolder import BadImage
    err = pickle.loads(pickle.dumps(BadImage("x.jpg", "truncated")))
    assert str(err) == "cannot read image x.jpg: truncated" and err.path == "x.jpg"
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    from PIL import Image
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "ok.jpg")
    cache = ProposalCache(tmp_path / "props", top=50)
    with pytest.raises(ValueError, match=r"cannot read image .*bad.jpg"):   # not BrokenProcessPool
        cache.fill(["a", "b"], [str(tmp_path / "ok.jpg"), str(tmp_path / "bad.jpg")], jobs=2)
