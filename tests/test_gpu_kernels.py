"""The numba.cuda kernels (minispp/kernels/gpu/) against the CPU kernels, on a CPU-only machine.

The checks live in tests/gpu_sim_checks.py and need Numba's CUDA simulator, whose flag
(NUMBA_ENABLE_CUDASIM=1) must be set before numba is imported: so they run here in a child
pytest process with that environment, once per session of this module, and each check of
that file is reported as one test of this one (from the child's JUnit XML). This process never
imports numba.cuda or the GPU modules, so the flag cannot leak into the rest of the suite.

The child's run must also be able to fail: test_broken_kernel_fails_the_run swaps a broken
kernel in (MINISPP_GPU_SIM_BREAK) and expects the child to report failures.
"""
import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CHECKS = os.path.join(TESTS, "gpu_sim_checks.py")
TIMEOUT = 900       # seconds for one child run (about 40 s on two shared cores)


def check_names(checks=CHECKS):
    """The test functions of a checks file (gpu_sim_checks.py), read without importing it."""
    with open(checks, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def run_checks(xml_path, *args, env=None, checks=CHECKS):
    """Run a checks file (gpu_sim_checks.py) under the simulator in a child process; returns
    (completed process, {test id: (outcome, message)}) with outcome passed / failed / error /
    skipped."""
    child_env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", **(env or {}))
    child_env.pop("PYTEST_ADDOPTS", None)      # the parent's -k / -x must not thin the child
    cmd = [sys.executable, "-m", "pytest", checks, "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", f"--junitxml={xml_path}", *args]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=child_env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    results = {}
    if os.path.exists(xml_path):
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed"}.get(tag, tag)
                    message = (el.get("message") or "") + "\n" + (el.text or "")
                    break
            results[case.get("name")] = (outcome, message)
    return proc, results


def tail(proc, n=3000):
    return (proc.stdout + proc.stderr)[-n:]


@pytest.fixture(scope="module")
def simulator_run(tmp_path_factory):
    return run_checks(str(tmp_path_factory.mktemp("gpu_sim") / "junit.xml"))


def assert_check_passed(check, simulator_run):
    """Every case of one check ran in the simulator process and passed."""
    proc, results = simulator_run
    mine = {k: v for k, v in results.items() if k == check or k.startswith(check + "[")}
    assert mine, f"{check} did not run in the simulator process:\n{tail(proc)}"
    bad = {k: v for k, v in mine.items() if v[0] != "passed"}
    assert not bad, "\n\n".join(f"{k}: {outcome}\n{message[-1500:]}"
                                for k, (outcome, message) in bad.items())


@pytest.mark.parametrize("check", check_names())
def test_simulator(check, simulator_run):
    """Every case of one check of gpu_sim_checks.py ran in the simulator and passed."""
    assert_check_passed(check, simulator_run)


def test_simulator_run_exit_status(simulator_run):
    """The child pytest ran checks and exited 0 (collection errors show here)."""
    proc, results = simulator_run
    assert proc.returncode == 0 and results, tail(proc)


def test_broken_kernel_fails_the_run(tmp_path):
    """With an off-by-one SPP bin swapped in, the child run fails, and says where."""
    proc, results = run_checks(str(tmp_path / "junit.xml"), "-k",
                               "test_spp_forward and window and ties and float32",
                               env={"MINISPP_GPU_SIM_BREAK": "spp_forward"})
    assert proc.returncode == 1, tail(proc)
    failed = [k for k, (outcome, _) in results.items() if outcome == "failed"]
    assert failed and all(k.startswith("test_spp_forward") for k in failed), tail(proc)
    assert "y:" in results[failed[0]][1]


def test_gpu_modules_import_without_a_device():
    """Importing the GPU kernel modules touches no device: they import on this CPU-only
    machine with the real CUDA target (not the simulator) selected."""
    code = ("import minispp.kernels.gpu.maxpool, minispp.kernels.gpu.spp, "
            "minispp.kernels.gpu.lrn, minispp.kernels.gpu.im2col, minispp.kernels.gpu.dropout\n"
            "from numba.core import config\n"
            "assert not config.ENABLE_CUDASIM\n"
            "print('ok')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", tail(proc)


def test_kernels_lower_for_the_cuda_target():
    """Every kernel types and lowers for the real CUDA target (sm_90, float32 and float64),
    which the simulator, running them as Python, cannot show (tests/gpu_lowering_check.py)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, os.path.join(TESTS, "gpu_lowering_check.py")],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, tail(proc)
    assert proc.stdout.count("ok ") == 26, tail(proc)
