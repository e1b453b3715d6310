"""The layers' GPU bodies and a whole net's GPU path against the CPU, on a CPU-only machine.

The checks live in tests/gpu_sim_bodies.py: they need Numba's CUDA simulator (its flag set
before numba is imported) and the simulated device of minispp.backend, so they run in a
child pytest process, once per session of this module, and each check of that file is
reported as one test here (tests/test_gpu_kernels.py's runner). The flag and the simulated
device never reach this process.

The child's run must be able to fail: with a broken SPP kernel, or a broken ReLU backward
body, swapped in (MINISPP_GPU_SIM_BREAK), the checks that go through it fail and say where.
"""
import os

import pytest

from tests.test_gpu_kernels import TESTS, assert_check_passed, check_names, run_checks, tail

BODIES = os.path.join(TESTS, "gpu_sim_bodies.py")


@pytest.fixture(scope="module")
def simulator_run(tmp_path_factory):
    return run_checks(str(tmp_path_factory.mktemp("gpu_bodies") / "junit.xml"), checks=BODIES)


@pytest.mark.parametrize("check", check_names(BODIES))
def test_simulator(check, simulator_run):
    """Every case of one check of gpu_sim_bodies.py ran in the simulator and passed."""
    assert_check_passed(check, simulator_run)


def test_simulator_run_exit_status(simulator_run):
    proc, results = simulator_run
    assert proc.returncode == 0 and results, tail(proc)


@pytest.mark.parametrize("name,selection,failing", [
    ("spp_forward", "whole_net and float64 or test_layer_gpu_body and spp-3-2-1-float64",
     {"test_whole_net_gpu_path_matches_the_cpu_path[float64]",
      "test_layer_gpu_body[spp-3-2-1-float64]"}),
    ("relu_backward", "whole_net and float64 or test_layer_gpu_body and relu-float64",
     {"test_whole_net_gpu_path_matches_the_cpu_path[float64]",
      "test_layer_gpu_body[relu-float64]"}),
])
def test_broken_gpu_path_fails_the_run(tmp_path, name, selection, failing):
    """A broken kernel or GPU body swapped in for the whole child run: exactly the checks
    that go through it fail, with the mismatch named."""
    proc, results = run_checks(str(tmp_path / "junit.xml"), "-k", selection, checks=BODIES,
                               env={"MINISPP_GPU_SIM_BREAK": name})
    assert proc.returncode == 1, tail(proc)
    failed = {k for k, (outcome, _) in results.items() if outcome == "failed"}
    assert failed == failing, tail(proc)
    assert all("differ" in results[k][1] for k in failed), tail(proc)
