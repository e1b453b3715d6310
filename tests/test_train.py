"""The training pipeline on a small net and a tiny embedded data set: exact resume, NaN stop,
corrupt images, the test views and the command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nets
from minispp.embedded import make_classification
from train.classify import Trainer, TrainingStopped

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
    return {p.name: p.value.copy() for p in nets.load(path).params}


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
    part.run()
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
    assert (tmp_path / "r/curves.png").stat().st_size > 1000


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
    from train.compare import run_comparison
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
