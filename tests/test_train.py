"""The training pipeline on a small net and a tiny embedded data set: exact resume, NaN stop,
corrupt images, the test views and the command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nets
from minispp.data.embedded import make_classification
from train.classify.trainer import Interrupted, Trainer, TrainingStopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_classification(tmp_path_factory.mktemp("emb") / "data", seed=1,
                               train_per_class=3, val_per_class=1)


def trainer(data, out, **kw):
    args = dict(net="small", spp=(3, 2, 1), mode="multi", epochs=2, batch=8, lr=0.01, seed=0,
                workers=2, progress=False, stats_images=20)
    args.update(kw)
    return Trainer(data, out, **args)


def params_of(path):
    return {p.name: p.value.copy() for p in nets.load(path).params.values()}


def test_resume_after_an_interrupt_mid_epoch_is_exact(data, tmp_path):
    full = trainer(data, tmp_path / "full")
    full_history = full.run()
    assert len(full_history) == 2 and full.epoch == 2

    part = trainer(data, tmp_path / "part")
    steps = {"n": 0}
    real_step = part.solver.step

    def step_then_stop():             # Ctrl-C arrives during the 6th batch (epoch 2, batch 2)
        real_step()
        steps["n"] += 1
        if steps["n"] == 6:
            part.stop_requested = True
    part.solver.step = step_then_stop
    with pytest.raises(Interrupted, match="stopped by SIGINT at epoch 2, batch 2") as stop:
        part.run()
    assert stop.value.code == 130
    assert (part.epoch, part.batch_index) == (1, 2)
    resumed = trainer(data, tmp_path / "part", resume=True)
    assert (resumed.epoch, resumed.batch_index) == (1, 2)
    history = resumed.run()
    for a, b in zip(history, full_history):
        for key in ("train_loss", "train_top1", "val_top1", "val_top5", "lr", "size"):
            assert a[key] == b[key], key
    pa, pb = params_of(tmp_path / "part/checkpoint.h5"), params_of(tmp_path / "full/checkpoint.h5")
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name])


def test_an_existing_run_is_not_overwritten_without_resume(data, tmp_path):
    trainer(data, tmp_path / "r", epochs=1).run()
    with pytest.raises(ValueError, match="exists: pass --resume"):
        trainer(data, tmp_path / "r")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    t = trainer(data, tmp_path / "nan", epochs=1)
    t.run()
    before = params_of(tmp_path / "nan/checkpoint.h5")
    again = trainer(data, tmp_path / "nan", resume=True, epochs=3)
    again.solver.lr = 1e12
    with pytest.raises(TrainingStopped, match="not finite at epoch 2") as err:
        again.run()
    assert err.value.code == 3
    after = params_of(tmp_path / "nan/checkpoint.h5")
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_corrupt_image_is_reported_and_skipped(data, tmp_path):
    import shutil
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    bad = copy / "train" / "cat" / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    t = trainer(str(copy), tmp_path / "out", epochs=1, stats_images=40)
    history = t.run()
    assert history[0]["skipped"] == 1


def test_logs_and_plots_are_written(data, tmp_path):
    trainer(data, tmp_path / "r", epochs=1, mode="random").run()
    rows = json.loads((tmp_path / "r/log.json").read_text())
    assert rows[0]["epoch"] == 1 and 180 <= rows[0]["size"] <= 224
    assert (tmp_path / "r/log.csv").read_text().startswith("epoch,size,lr,train_loss")
    assert (tmp_path / "r/best.h5").exists()
    pytest.importorskip("matplotlib")
    from PIL import Image

    from train.classify.trainer import plot_curves
    png = np.asarray(Image.open(tmp_path / "r/curves.png").convert("RGB"))
    assert png.shape[0] > 100 and (png < 128).any()            # axes and lines, not blank
    history = rows + [dict(rows[0], epoch=2, train_loss=0.5, val_top1=0.25)]
    plotted = plot_curves(history, str(tmp_path / "again.png"))
    assert plotted["train loss"] == ([1, 2], [rows[0]["train_loss"], 0.5])
    assert plotted["val top-1 (center)"][1] == [100 * rows[0]["val_top1"], 25.0]


def test_no_spp_net_trains_only_single_size(data, tmp_path):
    with pytest.raises(ValueError, match="use --mode single"):
        trainer(data, tmp_path / "x", spp=None, mode="multi")


def test_command_line_train_and_test_with_every_view(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = lambda *args: subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True)
    r = run("train", "--data", str(data), "--net", "small", "--spp", "3,2,1", "--mode", "single",
            "--epochs", "1", "--batch", "8", "--out", str(tmp_path / "cli"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "done: 1 epochs" in r.stdout
    for view in ("center", "10view", "full"):
        out = tmp_path / f"{view}.json"
        r = run("test", "--checkpoint", str(tmp_path / "cli/checkpoint.h5"), "--data", str(data),
                "--split", "val", "--view", view, "--json", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
        result = json.loads(out.read_text())
        assert result["images"] == 10 and 0 <= result["top1"] <= 1 and result["top5"] <= result["top1"]
    r = run("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "nowhere" in r.stderr
    assert "examples:" in run("train", "--help").stdout


def test_compare_trains_every_variant_and_writes_the_table(data, tmp_path):
    from train.classify.compare import run_comparison
    table = run_comparison(data, tmp_path / "cmp", seeds=(0, 1), epochs=1, batch=8,
                           progress=False, net="small", levels=(3, 2, 1))
    lines = table.splitlines()
    assert "over 2 seed(s) (0, 1), 1 epochs each" in lines[0]
    assert lines[2] == "| | center crop | 10 views | full image |"
    rows = {l.split(" | ")[0].strip("| "): l for l in lines[4:]}
    assert set(rows) == {"no SPP, single-size", "SPP, single-size", "SPP, multi-size"}
    assert rows["no SPP, single-size"].endswith("| n/a |")     # a no-SPP net has no full view
    assert "±" in rows["SPP, multi-size"]
    results = json.loads((tmp_path / "cmp/results.json").read_text())
    assert len(results) == 2 * (2 + 3 + 3)


def test_compare_runs_the_pyramid_ablation_and_shares_its_trainings(data, tmp_path, capsys):
    """Sec. 3.1.2's ablation: no SPP against two pyramids, single-size (issue 14, item 2)."""
    from train.classify.compare import run_comparison
    from train.cli import main
    out = tmp_path / "cmp"
    table = run_comparison(data, out, seeds=(0,), epochs=1, batch=8, progress=False, net="small",
                           pyramids=[(3, 2, 1), (2, 1)], modes=("single",), table="ablation")
    rows = {l.split(" | ")[0].strip("| "): l for l in table.splitlines()[4:]}
    assert list(rows) == ["no SPP, single-size", "SPP {3,2,1} (14 bins), single-size",
                          "SPP {2,1} (5 bins), single-size"]
    assert "small, SPP 3,2,1 vs 2,1" in table.splitlines()[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.json", "ablation.md", "nospp-single-seed0", "spp2_1-single-seed0",
        "spp3_2_1-single-seed0"]
    assert nets.load(str(out / "spp2_1-single-seed0/best.h5")).spp == (2, 1)
    assert nets.load(str(out / "nospp-single-seed0/best.h5")).spp is None
    # another table over some of the same variants trains nothing again
    stamp = os.path.getmtime(out / "spp2_1-single-seed0/best.h5")
    again = run_comparison(data, out, seeds=(0,), epochs=1, batch=8, progress=False, net="small",
                           pyramids=[(2, 1)], modes=("single",), table="one")
    assert os.path.getmtime(out / "spp2_1-single-seed0/best.h5") == stamp
    assert [l.split(" | ")[0].strip("| ") for l in again.splitlines()[4:]] == \
        ["no SPP, single-size", "SPP, single-size"]
    assert again.splitlines()[5].split(" | ")[1:] == table.splitlines()[6].split(" | ")[1:]
    for args, message in ((["--pyramids", "3,2,1/none"], "'none' is not a pyramid"),
                          (["--pyramids", "3,2,1/3,2,1"], "distinct pyramids"),
                          (["--modes", "single,warp"], "unknown training mode 'warp'"),
                          (["--table", "../x"], "contains a path separator")):
        assert main(["compare", "--data", str(data), "--out", str(tmp_path / "new"), *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


# -- resume continues exactly the recorded run (issue 17, item 6) ----------------------------
def test_resume_refuses_every_argument_that_differs_naming_each(data, tmp_path):
    out = tmp_path / "r"
    trainer(data, out, epochs=1).run()
    with pytest.raises(ValueError) as err:
        Trainer(data, out, resume=True, net="zf5", spp=(2, 1), form="fixed", mode="single",
                batch=4, lr=0.1, momentum=0.5, weight_decay=0.0, seed=1, mean=128.0,
                patience=2, blas_threads=1, progress=False)
    message = str(err.value)
    assert message.startswith(f"--resume continues the run recorded in {out / 'checkpoint.h5'} exactly")
    for part in ("--net zf5 (recorded: small)", "--spp 2,1 (recorded: 3,2,1)",
                 "--form fixed (recorded: appendix)", "--mode single (recorded: multi)",
                 "--batch 4 (recorded: 8)", "--lr 0.1 (recorded: 0.01)",
                 "--momentum 0.5 (recorded: 0.9)", "--weight-decay 0.0 (recorded: 0.0005)",
                 "--seed 1 (recorded: 0)", "--mean 128.0 (recorded: image)",
                 "--patience 2 (recorded: 3)", "--blas-threads 1 (recorded: 2)"):
        assert part in message
    with pytest.raises(ValueError, match=r"--spp none \(recorded: 3,2,1\)"):
        Trainer(data, out, resume=True, spp=None, progress=False)
    trainer(data, tmp_path / "two", epochs=2).save()            # a run of 2 epochs, at epoch 0
    with pytest.raises(ValueError, match=r"--epochs 1 \(recorded: 2; only more epochs"):
        Trainer(data, tmp_path / "two", resume=True, epochs=1, progress=False)


def test_resume_refuses_other_data(data, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(data, other)
    trainer(data, tmp_path / "r", epochs=1).run()
    with pytest.raises(ValueError, match=rf"--data {other} \(recorded: {os.path.abspath(data)}\)"):
        Trainer(other, tmp_path / "r", resume=True, progress=False)


def test_a_plain_resume_continues_the_recorded_settings(data, tmp_path):
    out = tmp_path / "r"
    t = trainer(data, out, epochs=2, lr=0.02, mode="random", seed=3)
    steps = {"n": 0}
    real_step = t.solver.step

    def step_then_stop():
        real_step()
        steps["n"] += 1
        if steps["n"] == 2:
            t.stop_requested = True
    t.solver.step = step_then_stop
    with pytest.raises(Interrupted):
        t.run()
    again = Trainer(None, out, resume=True, progress=False)       # nothing given: the recorded run
    assert {k: again.cfg[k] for k in ("net", "lr", "mode", "seed", "batch", "epochs")} == \
        {"net": "small", "lr": 0.02, "mode": "random", "seed": 3, "batch": 8, "epochs": 2}
    assert again.solver.lr == 0.02 and (again.epoch, again.batch_index) == (0, 2)
    same = trainer(data, out, resume=True, epochs=2, lr=0.02, mode="random", seed=3)   # as recorded
    assert same.cfg["epochs"] == 2


def test_a_finished_run_says_so_and_extends_only_with_a_larger_explicit_epochs(data, tmp_path, capsys):
    out = tmp_path / "r"
    trainer(data, out, epochs=1).run()
    before = params_of(out / "checkpoint.h5")
    stamp = os.path.getmtime(out / "checkpoint.h5")
    capsys.readouterr()
    done = Trainer(None, out, resume=True, progress=False)
    history = done.run()
    printed = capsys.readouterr().out
    assert f"the run in {out} is finished (1 of 1 epochs): nothing to train" in printed
    assert len(history) == 1 and done.epoch == 1
    assert os.path.getmtime(out / "checkpoint.h5") == stamp          # not trained, not saved
    for name, a in params_of(out / "checkpoint.h5").items():
        np.testing.assert_array_equal(a, before[name])
    more = Trainer(data, out, resume=True, epochs=2, progress=False)
    assert f"extending the run in {out} from 1 to 2 epochs" in capsys.readouterr().out
    assert len(more.run()) == 2
    meta = nets.load(out / "checkpoint.h5").meta
    assert meta["epoch"] == 2 and meta["config"]["extended"] == [{"from": 1, "to": 2, "at_epoch": 1}]


def cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def test_command_line_resume_uses_the_recorded_run_and_refuses_other_arguments(data, tmp_path):
    out = str(tmp_path / "cli")
    r = cli("train", "--data", str(data), "--net", "small", "--spp", "3,2,1", "--mode", "single",
            "--epochs", "1", "--batch", "8", "--lr", "0.02", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    best = json.loads((tmp_path / "cli/log.json").read_text())[0]
    assert (f"best epoch 1 of 1: val top-1 error {best['val_top1']:.1%}, top-5 "
            f"{best['val_top5']:.1%} (center crop, 10 images) -> {out}/best.h5") in r.stdout
    r = cli("train", "--out", out, "--resume", "--quiet")                  # unadorned: finished
    assert r.returncode == 0, r.stderr
    assert "is finished (1 of 1 epochs): nothing to train" in r.stdout
    r = cli("train", "--data", str(data), "--out", out, "--resume", "--lr", "0.01", "--net", "zf5")
    assert r.returncode == 2
    assert "--net zf5 (recorded: small); --lr 0.01 (recorded: 0.02)" in r.stderr
    r = cli("train", "--out", out, "--resume", "--epochs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "from 1 to 2 epochs" in r.stdout and "done: 2 epochs" in r.stdout
    r = cli("train", "--out", str(tmp_path / "new"))
    assert r.returncode == 2 and "--data is required" in r.stderr


# -- interruption (issue 17, item 12) --------------------------------------------------------
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_saves_the_checkpoint_and_exits_non_zero(data, tmp_path, sig, code):
    import signal
    import time
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "train", "train", "--data", str(data), "--net",
                             "small", "--spp", "3,2,1", "--mode", "single", "--epochs", "1000",
                             "--batch", "8", "--out", str(out), "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.h5").exists():             # training (epoch 1 is saved)
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (stdout, stderr)
    assert f"error: stopped by {sig} at epoch" in stderr and "continue with --resume" in stderr
    meta = nets.load(out / "checkpoint.h5").meta                # saved, loadable, mid-run
    assert 1 <= meta["epoch"] < 1000
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_temporary_files_of_killed_saves_are_removed_on_the_next_start(data, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                 # a pid that is gone
    out = tmp_path / "r"
    out.mkdir()
    stale = [out / f".checkpoint.h5.tmp{dead.pid}", out / f".best.h5.tmp{dead.pid}"]
    kept = [out / f".checkpoint.h5.tmp{os.getppid()}",         # a live process's save
            out / f".notes.h5.tmp{dead.pid}", out / "checkpoint.h5.tmp1"]   # not ours
    for p in stale + kept:
        p.write_bytes(b"partial")
    trainer(data, out, epochs=1).run()
    assert [p.exists() for p in stale] == [False, False]
    assert all(p.exists() for p in kept)
    stale[0].write_bytes(b"partial")                            # and when resuming
    Trainer(None, out, resume=True, progress=False)
    assert not stale[0].exists()


# -- determinism (issue 17, item 15) ---------------------------------------------------------
def test_identical_runs_are_bit_identical_whatever_the_blas_thread_count(data, tmp_path, capsys):
    from threadpoolctl import threadpool_limits
    params = []
    for i, threads in enumerate((1, 2, 2)):
        with threadpool_limits(limits=threads, user_api="blas"):   # as OPENBLAS_NUM_THREADS
            trainer(data, tmp_path / f"r{i}", epochs=1, workers=1 + i % 2).run()
        params.append(params_of(tmp_path / f"r{i}/checkpoint.h5"))
    for other in params[1:]:
        for name in params[0]:
            np.testing.assert_array_equal(params[0][name], other[name], err_msg=name)
    assert nets.load(tmp_path / "r0/checkpoint.h5").meta["config"]["blas_threads"] == 2


KERNEL_BITS = """
import hashlib, sys
import numpy as np
from minispp.kernels.cpu.lrn import lrn_backward, lrn_forward
from minispp.kernels.cpu.sgd import sgd_momentum_update
rng, f = np.random.default_rng(0), np.float32
x = rng.standard_normal((2, 16, 300), dtype=np.float32) * 3
y, scale, inv, dx, ratio = (np.empty_like(x) for _ in range(5))
lrn_forward(x, 5, f(1e-4), f(0.75), f(2.0), y, scale, inv)
lrn_backward(x, x[::-1].copy(), scale, inv, 5, f(1e-4), f(0.75), dx, ratio)
w, g, v = (rng.standard_normal(4096, dtype=np.float32) for _ in range(3))
sgd_momentum_update(w, g, v, f(0.01), f(0.9), f(5e-4))
print(hashlib.sha256(b"".join(a.tobytes() for a in (y, dx, w, v))).hexdigest())
"""


def test_numba_kernels_give_the_same_bits_whatever_the_cpu_they_are_compiled_for(tmp_path):
    """LRN and the SGD update compiled for this CPU and for a generic x86-64/arm64 one (what
    another machine's Numba would generate) agree bit for bit: no fast-math reciprocal
    estimates, FMA contraction or reassociation."""
    import contextlib
    import io
    here = io.StringIO()
    with contextlib.redirect_stdout(here):                     # this CPU, in this process
        exec(KERNEL_BITS, {})
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_CPU_NAME="generic",
               NUMBA_CACHE_DIR=str(tmp_path / "numba-generic"))
    r = subprocess.run([sys.executable, "-c", KERNEL_BITS], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == here.getvalue().strip()


def test_settings_that_make_no_sense_are_refused_naming_the_flag(data, tmp_path):
    for kw, flag in (({"epochs": 0}, "--epochs"), ({"batch": -1}, "--batch"),
                     ({"blas_threads": 0}, "--blas-threads"), ({"patience": 0}, "--patience")):
        with pytest.raises(ValueError, match=f"{flag} must be a positive integer, got"):
            trainer(data, tmp_path / "x", **kw)
    assert not (tmp_path / "x" / "checkpoint.h5").exists()
