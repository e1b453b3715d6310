"""Several processes as one run (minispp.distributed): data-parallel SGD over `mpiexec -n 2`
equals one process at the global batch (dropout and multi-size included), a resume on
another rank count, the parameter checksum, a killed rank ending the job, and sharded
feature extraction equal to one process's cache. The MPI tests start `mpiexec -n 2` (the
MPICH wheel of the `mpi` extra) and skip only where mpi4py is not installed."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import nets
from layers import Dropout
from minispp import distributed
from minispp.data.embedded import make_classification, make_voc
from minispp.data.loader import BatchLoader
from minispp.params import Params
from minispp.storage.feature_cache import read_cache
from tests.helpers import save_small, wait_for_shards
from train.classify.trainer import Trainer
from train.features.extract import extract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_mpi = pytest.mark.skipif(not distributed.mpi_available(),
                               reason="mpi4py is not installed (pip install -e '.[mpi]')")
SMALL = ["--net", "small", "--spp", "3,2,1", "--mode", "multi", "--batch", "16", "--seed", "0",
         "--blas-threads", "1", "--quiet"]


def mpiexec():
    """The mpiexec beside this Python (the MPICH wheel's), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    assert found, "mpi4py is installed but no mpiexec was found (pip install mpich)"
    return found


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_VARIABLES}
    # MPICH's Hydra ends a job that outlives MPIEXEC_TIMEOUT: a hang fails a test, never the suite
    env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", MPIEXEC_TIMEOUT="240", **extra)
    return env


def run_ranks(n, args, timeout=300, module=True):
    cmd = [mpiexec(), "-n", str(n), sys.executable] + (["-m", "train"] if module else []) + args
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def params_of(path):
    return {p.name: p.value.copy() for p in nets.load(path).params.values()}


def assert_float32_close(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 30 training images: batches of 16 and 14 per epoch (the last one split 7 + 7)
    return str(make_classification(tmp_path_factory.mktemp("dp") / "data", seed=1,
                                   train_per_class=3, val_per_class=1))


def one_process(data, out, epochs, resume=False):
    t = Trainer(data, out, net="small", spp=(3, 2, 1), mode="multi", epochs=epochs, batch=16,
                seed=0, blas_threads=1, progress=False, resume=resume)   # the CLI's statistics
    t.run()
    return t


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One process at batch 16: the parameters after 3 epochs (6 steps), and the initial ones."""
    out = tmp_path_factory.mktemp("ref")
    one_process(data, out / "e3", 3)
    return {3: params_of(out / "e3/checkpoint.h5"),
            "init": {p.name: p.value.copy() for p in
                     nets.build("small", 10, spp=(3, 2, 1),
                                rng=np.random.default_rng([0, 0])).params.values()}}


# -- the pieces, in one process --------------------------------------------------------------

def test_batch_shares_cover_the_batch_in_order():
    for n in (0, 1, 5, 16):
        for size in (1, 2, 3):
            parts = [distributed.batch_share(np.arange(n), r, size) for r in range(size)]
            np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sharded_loader_yields_each_ranks_slice_with_its_indices(data):
    from minispp.data.imagefolder import ImageFolder
    ds = ImageFolder(os.path.join(data, "train"))
    order = np.random.default_rng(3).permutation(len(ds))
    make = lambda img, rng: np.full((3, 2, 2), rng.random(), np.float32)   # noqa: E731
    whole = list(BatchLoader(ds, order, 16, make, seed=(7,), indices=True))
    parts = [list(BatchLoader(ds, order, 16, make, seed=(7,), indices=True, shard=(r, 2)))
             for r in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2
    for b, x, y, ids in whole:
        assert ids == [int(i) for i in order[16 * b:16 * (b + 1)]]
        np.testing.assert_array_equal(np.concatenate([parts[r][b][1] for r in range(2)]), x)
        assert parts[0][b][3] + parts[1][b][3] == ids


def test_keyed_dropout_masks_depend_on_the_image_not_the_batch():
    d = Dropout(0.5, rng=np.random.default_rng(0))
    d.setup((3, 64))
    x = np.ones((3, 64), np.float32)
    d.key_masks((0, 5, 1, 0), [4, 9, 2])
    a = d.forward(x, train=True)
    d.key_masks((0, 5, 1, 0), [2, 4])
    b = d.forward(x[:2], train=True)
    np.testing.assert_array_equal(b, a[[2, 0]])
    assert set(np.unique(a)) == {0.0, 2.0} and not np.array_equal(a[0], a[1])
    d.key_masks((0, 5, 2, 0), [4])                       # another epoch: another mask
    assert not np.array_equal(d.forward(x[:1], train=True)[0], a[0])
    with pytest.raises(ValueError, match="2 mask keys for a batch of 3"):
        d.key_masks((0,), [1, 2])
        d.forward(x, train=True)


def test_launch_is_recognised_from_the_launchers_variables():
    assert not distributed.launched_by_mpi({"HOME": "/"})
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        assert distributed.launched_by_mpi({var: "0"})
    assert distributed.init(False).size == 1


def test_fused_allreduce_on_one_process_gives_the_mean():
    p = Params()
    w = p.get_or_create("w", (2, 3), lambda s: np.zeros(s))
    b = p.get_or_create("b", (3,), lambda s: np.zeros(s))
    w.grad[...], b.grad[...] = 8.0, np.arange(3) * 4.0
    r = distributed.GradientAllreduce(distributed.Single(), p, 2)
    total = r.reduce([5.5, 4.0], count=1)
    np.testing.assert_array_equal(total, [5.5, 4.0])
    np.testing.assert_array_equal(w.grad, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(b.grad, [0.0, 1.0, 2.0])


# -- two ranks -----------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_at_batch_8_equal_one_process_at_batch_16(data, reference, tmp_path):
    out = tmp_path / "r2"
    r = run_ranks(2, ["train", "--data", data, "--epochs", "3", "--out", str(out),
                      "--check-every", "1"] + SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: 3 epochs") == 1               # rank 0 alone reports
    got = params_of(out / "checkpoint.h5")
    assert_float32_close(got, reference[3])
    # the comparison is not vacuous: 6 steps (224, 180, 224) moved every weight
    for name in ("conv1.W", "fc6.W", "fc8.W"):
        assert np.abs(got[name] - reference["init"][name]).max() > 1e-3, name
    hist = nets.load(out / "checkpoint.h5").meta["history"]
    assert [h["size"] for h in hist] == [224, 180, 224] and {h["ranks"] for h in hist} == {2}
    files = set(os.listdir(out))
    assert {"best.h5", "checkpoint.h5", "log.csv", "log.json"} <= files
    assert files <= {"best.h5", "checkpoint.h5", "log.csv", "log.json", "curves.png"}


@needs_mpi
def test_a_run_resumes_on_another_rank_count_or_is_refused(data, reference, tmp_path):
    out = tmp_path / "r"
    r = run_ranks(2, ["train", "--data", data, "--epochs", "1", "--out", str(out)] + SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_ranks(2, ["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]                 # the same R
    t = one_process(data, out, 3, resume=True)              # then one process
    assert [h["ranks"] for h in t.history] == [2, 2, 1]
    assert_float32_close(params_of(out / "checkpoint.h5"), reference[3])
    # a run recorded before per-image dropout masks cannot be split over ranks
    m = nets.load(out / "checkpoint.h5")
    del m.meta["config"]["dropout_masks"]
    m.save(out / "checkpoint.h5", meta=m.meta, extras=m.extras)
    r = run_ranks(2, ["train", "--out", str(out), "--resume", "--epochs", "3", "--quiet"])
    assert r.returncode == 2 and "resume it in one process" in r.stderr, r.stderr[-2000:]


DIVERGE = """
import numpy as np
from minispp import distributed
from minispp.params import Params
comm = distributed.init(True)
p = Params()
w = p.get_or_create("w", (5,), lambda s: np.ones(s))
w.grad[...] = comm.rank + 1.0                     # gradient sums of 1 and 2 over 3 images
total = distributed.GradientAllreduce(comm, p, 2).reduce([comm.rank + 1.0, 1.0 + comm.rank], 1)
print(f"rank {comm.rank} mean {w.grad[0]:.6f} stats {total[0]:.1f} {total[1]:.1f}", flush=True)
distributed.check_identical(comm, p, "at the start")
if comm.rank == 1:
    w.value[3] = np.nextafter(w.value[3], np.float32(2))      # one bit on one rank
try:
    distributed.check_identical(comm, p, "after step 7")
    print(f"rank {comm.rank} no error", flush=True)
except distributed.ParametersDiverged as err:
    print(f"rank {comm.rank} stopped: {err}", flush=True)
"""


@needs_mpi
def test_fused_allreduce_and_checksum_over_two_ranks():
    r = run_ranks(2, ["-c", DIVERGE], timeout=120, module=False)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} mean 1.000000 stats 3.0 3.0" in r.stdout, r.stdout
        assert f"rank {rank} stopped: the parameters of the 2 ranks differ after step 7" in r.stdout
    assert "no error" not in r.stdout


def rank_pid(mark, rank):
    """The pid of the process with our mark and PMI_RANK=rank in its environment."""
    want = {f"MINISPP_TEST_MARK={mark}".encode(), f"PMI_RANK={rank}".encode()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            return int(pid)
    return None


@needs_mpi
def test_a_killed_rank_ends_the_others_with_an_error(data, tmp_path):
    mark = uuid.uuid4().hex
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "train", "train", "--data", data,
           "--epochs", "500", "--out", str(tmp_path / "k")] + SMALL
    proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(MINISPP_TEST_MARK=mark),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:                     # mid-run: after the first epoch
            if line.startswith("epoch 1:"):
                break
        else:
            pytest.fail("the 2-rank run ended before its first epoch")
        pid = rank_pid(mark, 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        rc = proc.wait(timeout=60)                 # would hang in the allreduce without cleanup
        assert time.monotonic() - t0 < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc != 0
    assert rank_pid(mark, 0) is None                 # rank 0 is gone too
    proc.stdout.close()


@needs_mpi
def test_ctrl_c_stops_every_rank_at_the_same_step_with_a_checkpoint(data, tmp_path):
    out = tmp_path / "c"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "train", "train", "--data", data,
           "--epochs", "500", "--out", str(out)] + SMALL
    proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 2:"):
                break
        proc.send_signal(signal.SIGINT)           # mpiexec passes it on to every rank
        rc = proc.wait(timeout=60)
        text = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    assert rc == 130, text[-2000:]
    assert text.count("checkpoint") >= 2 and "continue with --resume" in text
    meta = nets.load(out / "checkpoint.h5").meta
    assert meta["epoch"] >= 2 and meta["epoch"] < 500
    t = Trainer(None, out, resume=True, progress=False)
    assert (t.epoch, t.batch_index) == (meta["epoch"], meta["batch"])


@needs_mpi
def test_a_command_that_does_not_split_its_work_is_refused_under_mpiexec(tmp_path):
    r = run_ranks(2, ["svm", "--train", str(tmp_path / "none.h5")], timeout=60)
    assert r.returncode == 2 and "`minispp svm` runs in one process" in r.stderr, r.stderr[-2000:]


RANK_FAILS = """
import sys
from minispp import distributed
comm = distributed.init(True)
if comm.rank == int(sys.argv[1]):
    raise RuntimeError("this rank fails")
comm.barrier()                 # the other rank would wait here for ever
print("passed the barrier", flush=True)
"""


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_on_one_rank_aborts_the_job(rank):
    t0 = time.monotonic()
    r = run_ranks(2, ["-c", RANK_FAILS, str(rank)], timeout=60, module=False)
    assert time.monotonic() - t0 < 60
    assert r.returncode != 0 and "passed the barrier" not in r.stdout
    # the failing rank says so; the launcher may cut the forwarding of its last lines when
    # MPI_Abort ends the job, so either of its two reports is enough
    assert (f"rank {rank}: uncaught RuntimeError; aborting every rank" in r.stderr
            or "RuntimeError: this rank fails" in r.stderr), r.stderr[-2000:]


SHARDED_EXTRACT = """
import sys, time
from minispp import distributed
import train.features.extract as F
comm = distributed.init(True)
ckpt, voc, a, b, slow = sys.argv[1:6]
if slow == "1":
    orig = F.view_input
    def slowly(*args, **kw):
        time.sleep(0.25)
        return orig(*args, **kw)
    F.view_input = slowly
r = F.extract(ckpt, "voc", voc, "trainval", ["spp", "fc6"], 48, "full", {"spp": a, "fc6": b},
              batch=2, workers=1, progress=False, shard_size=3)
print(f"rank {comm.rank} computed {r['computed']}", flush=True)
"""


@needs_mpi
def test_sharded_features_equal_the_single_process_cache_and_resume_after_a_kill(tmp_path):
    voc = make_voc(tmp_path / "voc", seed=0, trainval=14, test=2)
    ckpt = save_small(tmp_path / "small.h5", 0)
    ref = {k: str(tmp_path / f"ref-{k}.h5") for k in ("spp", "fc6")}
    extract(ckpt, "voc", voc, "trainval", ["spp", "fc6"], 48, "full", ref, batch=2, workers=1,
            progress=False, shard_size=3)
    a, b = str(tmp_path / "spp.h5"), str(tmp_path / "fc6.h5")
    r = run_ranks(2, ["-c", SHARDED_EXTRACT, ckpt, str(voc), a, b, "0"], module=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 computed 14" in r.stdout and "rank 1 computed 14" in r.stdout   # 14, not 28
    for k, p in (("spp", a), ("fc6", b)):
        mine, theirs = read_cache(p), read_cache(ref[k])
        np.testing.assert_array_equal(mine.features, theirs.features)
        assert list(mine.ids) == list(theirs.ids) and mine.valid.all()
        assert not os.path.exists(p + ".parts")
    # killed after some shards (a slow input step), then the same command on 2 ranks again
    a, b = str(tmp_path / "k-spp.h5"), str(tmp_path / "k-fc6.h5")
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-c", SHARDED_EXTRACT, ckpt,
                             str(voc), a, b, "1"], cwd=ROOT, env=clean_env(MINISPP_TEST_MARK=mark),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_shards(proc, b, 2)
        os.kill(rank_pid(mark, 1), signal.SIGKILL)      # mpiexec then ends rank 0
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = len(glob.glob(a + ".parts/shard-*.h5"))
    assert not os.path.exists(a) and 1 <= left < 5
    r = run_ranks(2, ["-c", SHARDED_EXTRACT, ckpt, str(voc), a, b, "0"], module=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 computed 14" not in r.stdout                  # the kept shards were reused
    for k, p in (("spp", a), ("fc6", b)):
        np.testing.assert_array_equal(read_cache(p).features, read_cache(ref[k]).features)


def h5_arrays(path):
    import h5py
    got = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: got.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
    return got


@needs_mpi
def test_sharded_proposals_and_detector_caches_equal_one_process(tmp_path):
    voc = make_voc(tmp_path / "voc", seed=1, trainval=4, test=1)
    ckpt = save_small(tmp_path / "small.h5")
    two, one = tmp_path / "two", tmp_path / "one"
    r = run_ranks(2, ["proposals", "--voc", str(voc), "--split", "trainval", "--top", "100",
                      "--out", str(two)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("recall of") == 1                       # rank 0 alone reports
    args = ["detect-train", "--voc", str(voc), "--checkpoint", ckpt, "--scales", "96",
            "--svm-scales", "96", "--proposals", "100", "--ft-iters", "5", "--quiet"]
    r = run_ranks(2, args + ["--out", str(two)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("detector written to") == 1
    from train.cli import main
    assert main(args + ["--out", str(one)]) == 0
    for folder in ("proposals", "conv5-96"):
        names = sorted(os.listdir(one / folder))
        assert sorted(os.listdir(two / folder)) == names and len(names) >= 4
        for name in names:
            if name.endswith(".h5"):
                a, b = h5_arrays(one / folder / name), h5_arrays(two / folder / name)
                assert a.keys() == b.keys()
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k], err_msg=f"{folder}/{name}:{k}")
    a, b = h5_arrays(one / "detector.h5"), h5_arrays(two / "detector.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _fake_nccl(as_bytes):
    """CuPy's NCCL binding as far as the id goes: CuPy 14 makes and takes bytes, older CuPy
    a tuple of 128 small ints; each refuses the other form with a TypeError."""
    made = bytes((7 * i + 200) % 256 for i in range(128))      # bytes above 127 included
    form = made if as_bytes else tuple(np.frombuffer(made, np.int8).tolist())

    class Communicator:
        def __init__(self, size, comm_id, rank):
            if type(comm_id) is not type(form):
                raise TypeError(f"expected {type(form).__name__}")
            self.id, self.size, self.rank = comm_id, size, rank

    return type("FakeNccl", (), {"get_unique_id": staticmethod(lambda: form),
                                 "NcclCommunicator": Communicator}), form


@pytest.mark.parametrize("as_bytes", [True, False], ids=["cupy14-bytes", "older-tuple"])
def test_every_rank_gets_rank_0s_nccl_id_in_the_form_its_cupy_takes(as_bytes):
    nccl, form = _fake_nccl(as_bytes)
    sent = {}

    def bcast(buf, root):                  # MPI's Bcast over two ranks, in-process
        if "id" in sent:
            buf[:] = sent["id"]
        else:
            sent["id"] = buf.copy()

    comms = [distributed.nccl_communicator(nccl, bcast, 2, rank) for rank in (0, 1)]
    assert [c.rank for c in comms] == [0, 1] and all(c.size == 2 for c in comms)
    assert all(c.id == form for c in comms)
