"""Fixtures shared by the test modules; plain helper functions are in tests/helpers.py."""
import numpy as np
import pytest

# Largest relative error seen per checked layer, printed at the end of the run.
GRADCHECK_REPORT = {}


@pytest.fixture
def record_gradcheck():
    def record(layer_kind, errors):
        worst = max(errors.values())
        GRADCHECK_REPORT[layer_kind] = max(worst, GRADCHECK_REPORT.get(layer_kind, 0.0))
    return record


def pytest_terminal_summary(terminalreporter):
    if not GRADCHECK_REPORT:
        return
    tr = terminalreporter
    tr.section("gradient check: max relative error per layer (float64, central differences)")
    for kind in sorted(GRADCHECK_REPORT):
        tr.write_line(f"  {kind:<34} {GRADCHECK_REPORT[kind]:.2e}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

