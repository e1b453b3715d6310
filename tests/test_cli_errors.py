"""Bad arguments, unwritable outputs and odd file names end in one line `error: ...` and exit
status 2 (Ctrl-C: 130), before any work and without leaving anything behind."""
import os
import subprocess
import sys

import numpy as np
import pytest

import nets
from tests.helpers import save_small
from train.cli import classify as cli_classify
from train.cli import main
from train.detection.detector import Detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["test", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["test", "--workers", "-1"], "--workers must be at least 1, got -1"),
    (["embedded", "--train", "-2"], "--train must be at least 1, got -2"),
    (["embedded", "--val", "0"], "--val must be at least 1"),
    (["embedded", "--voc", "--trainval", "0"], "--trainval must be at least 1"),
    (["embedded", "--voc", "--test", "-5"], "--test must be at least 1"),
    (["compare", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["compare", "--seeds", "0,x"], "--seeds must be integers"),
    (["compare", "--seeds", "1,1"], "names a seed twice"),
    (["compare", "--lr", "0"], "--lr must be a positive number"),
    (["detect-time", "--images", "0"], "--images must be at least 1, got 0"),
    (["detect-test", "--limit", "0"], "--limit must be at least 1, got 0"),
    (["detect-test", "--scales", "688,0"], "each of --scales must be at least 1"),
])
def test_values_that_make_no_sense_are_refused(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    required = {"test": ["--checkpoint", str(tmp_path / "none.h5"), "--data", str(tmp_path)],
                "embedded": ["--out", str(out)],
                "compare": ["--data", str(tmp_path), "--out", str(out)],
                "detect-time": ["--voc", str(tmp_path), "--model", str(tmp_path / "none")],
                "detect-test": ["--voc", str(tmp_path), "--model", str(tmp_path / "none")]}
    assert main(args + required[args[0]]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()                         # nothing written


def test_json_into_a_missing_folder_is_refused_before_the_evaluation(tmp_path, capsys):
    ckpt = save_small(tmp_path / "small.h5")
    missing = tmp_path / "no" / "r.json"
    assert main(["test", "--checkpoint", ckpt, "--data", str(tmp_path / "none"),
                 "--json", str(missing)]) == 2
    line = one_line_error(capsys)
    assert "--json" in line and "does not exist" in line      # not the missing data folder
    assert main(["test", "--checkpoint", ckpt, "--data", str(tmp_path), "--json",
                 str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys)


@pytest.mark.parametrize("command", [["train", "--data", "DATA"], ["embedded"],
                                     ["compare", "--data", "DATA"]])
def test_an_out_folder_under_a_regular_file_is_refused(tmp_path, capsys, command):
    (tmp_path / "file").write_text("mine")
    args = [str(tmp_path) if a == "DATA" else a for a in command]
    assert main(args + ["--out", str(tmp_path / "file" / "run")]) == 2
    assert "cannot be created" in one_line_error(capsys)
    assert (tmp_path / "file").read_text() == "mine"
    assert main(args + ["--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in one_line_error(capsys)


def test_combining_detectors_of_other_classes_names_both(tmp_path, capsys):
    model = nets.load(save_small(tmp_path / "small.h5"))
    for name, classes in (("det1", ["cat", "dog"]), ("det2", ["cat", "emu"])):
        os.makedirs(tmp_path / name)
        Detector(model, classes, {}, rng=np.random.default_rng(0)).save(
            str(tmp_path / name / "detector.h5"))
    assert main(["detect-test", "--voc", str(tmp_path / "none"), "--model", str(tmp_path / "det1"),
                 "--combine", str(tmp_path / "det2")]) == 2
    line = one_line_error(capsys)
    assert "det1" in line and "det2" in line and "'emu'" in line and "'dog'" in line


def test_a_file_name_that_is_not_utf8_is_printed_escaped(tmp_path, capsys):
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xffmodel.h5")   # a surrogate escape
    assert main(["test", "--checkpoint", name, "--data", str(tmp_path)]) == 2
    assert "\\xffmodel.h5" in one_line_error(capsys)


def test_a_finished_command_does_not_fail_printing_a_non_utf8_name(tmp_path):
    out = os.fsencode(str(tmp_path)) + b"/\xffdata"
    r = subprocess.run([sys.executable, "-m", "train", "embedded", "--out", out, "--train", "1",
                        "--val", "1"], cwd=ROOT, capture_output=True,
                       env=dict(os.environ, PYTHONIOENCODING="utf-8"))       # strict stdout
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"\\xffdata" in r.stdout and os.path.isdir(out)


@pytest.mark.parametrize("exc, code, text", [
    (PermissionError(13, "Permission denied", "/x/y"), 2, "Permission denied: '/x/y'"),
    (IsADirectoryError(21, "Is a directory", "/x"), 2, "Is a directory"),
    (FileNotFoundError(2, "No such file or directory", "/z"), 2, "No such file"),
    (UnicodeEncodeError("utf-8", "/d/\udcffx", 3, 4, "surrogates not allowed"), 2,
     "the name /d/\\xffx is not valid UTF-8"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_expected_exceptions_are_one_line_errors(tmp_path, capsys, monkeypatch, exc, code, text):
    def fail(a):
        raise exc
    monkeypatch.setattr(cli_classify, "cmd_test", fail)
    assert main(["test", "--checkpoint", "c.h5", "--data", str(tmp_path)]) == code
    assert text in one_line_error(capsys)


@pytest.mark.parametrize("args, message", [(["0", "6"], "size must be a positive integer"),
                                           (["abc", "6"], "must be positive integers"),
                                           (["10", "0"], "level must be a positive integer"),
                                           (["10", "123456789"], "at most")])
def test_geometry_main_refuses_bad_numbers_in_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "minispp.geometry"] + args, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
