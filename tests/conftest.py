import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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


def distinct(rng, shape, spacing=0.05):
    """float64 values all at least `spacing` apart (no ties for max-type layers), shuffled."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * spacing
