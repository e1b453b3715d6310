"""Helpers the test modules import: `from tests.helpers import distinct, save_small`."""
import glob
import time

import numpy as np


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


def wait_for_shards(proc, cache, count, seconds=120):
    """Wait until the running extraction proc has written count shards of cache (so that a
    test can kill it mid-run); fails if it ends first or takes longer than seconds."""
    deadline = time.time() + seconds
    while len(glob.glob(cache + ".parts/shard-*.h5")) < count:
        assert proc.poll() is None, "the extraction ended before it could be killed"
        assert time.time() < deadline, "no shard written in time"
        time.sleep(0.05)
