"""Batches built ahead of the training step by worker threads (Pillow decodes and resizes
with the GIL released), in a fixed order, with one random Generator per sample so a batch
is the same whatever thread made it: a resumed run sees exactly the batches it would have.
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minispp.data.imagefolder import BadImage


class BatchLoader:
    """dataset: has load(i) -> (uint8 image, label). order: sample indices for this epoch.
    make_input(img, rng) -> float32 (3, h, w). seed: a tuple; sample i's Generator is
    default_rng(seed + (i,)). Iterating yields (x (B, 3, h, w), labels (B,)); unreadable
    images are reported on stderr, counted in .skipped and left out of their batch.
    .wait_seconds: time the consumer spent waiting for data.

    shard=(rank, size): this process's part of each batch of the order (a contiguous slice,
    minispp.distributed.batch_share) for a data-parallel run; every batch is then yielded,
    an empty share as x = labels = None, since every rank takes part in every step.
    indices=True: yield (b, x, labels, ids) with ids the order's indices of x's rows."""

    def __init__(self, dataset, order, batch_size, make_input, seed, workers=2, prefetch=3,
                 start_batch=0, report=None, shard=None, indices=False):
        self.dataset, self.order = dataset, np.asarray(order)
        self.batch_size, self.make_input = int(batch_size), make_input
        self.seed, self.workers, self.prefetch = tuple(seed), max(1, workers), max(1, prefetch)
        self.start_batch = int(start_batch)
        self.report = report or (lambda msg: print(msg, file=sys.stderr))
        self.shard, self.indices = (None if shard is None else tuple(int(v) for v in shard)), indices
        self.skipped = []
        self.wait_seconds = 0.0

    def __len__(self):
        return -(-len(self.order) // self.batch_size)

    def _batch(self, b):
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        if self.shard is not None:
            from minispp.distributed import batch_share
            idx = batch_share(idx, *self.shard)
        xs, ys, ids, bad = [], [], [], []
        for i in idx:
            try:
                img, label = self.dataset.load(int(i))
                xs.append(self.make_input(img, np.random.default_rng(self.seed + (int(i),))))
                ys.append(label)
                ids.append(int(i))
            except BadImage as err:
                bad.append(str(err))
        if not xs:
            return None, None, ids, bad
        return np.stack(xs), np.array(ys, dtype=np.int64), ids, bad

    def __iter__(self):
        n = len(self)
        with ThreadPoolExecutor(self.workers) as pool:
            pending = {}
            nxt = self.start_batch
            for b in range(self.start_batch, n):
                while nxt < n and nxt < b + self.prefetch:
                    pending[nxt] = pool.submit(self._batch, nxt)
                    nxt += 1
                t0 = time.perf_counter()
                x, y, ids, bad = pending.pop(b).result()
                self.wait_seconds += time.perf_counter() - t0
                for msg in bad:
                    self.skipped.append(msg)
                    self.report(f"skipped: {msg}")
                if x is not None or self.shard is not None:
                    yield (b, x, y, ids) if self.indices else (b, x, y)
