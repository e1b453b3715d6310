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


def save_small(path, seed=0):
    """A checkpoint of the small net (10 classes, SPP (3, 2, 1)) with the extras a trained
    run has (mean image, pixel std): the model the feature and detector tests load."""
    import nets
    m = nets.build("small", num_classes=10, spp=(3, 2, 1), rng=np.random.default_rng(seed))
    m.save(path, meta={"config": {"mean": "image"}},
           extras={"mean_image": np.full((3, 32, 32), 110, np.float32), "pixel_std": np.array(60.0)})
    return str(path)
