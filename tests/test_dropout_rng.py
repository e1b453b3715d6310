"""The dropout masks' generator (minispp/kernels/philox.py, minispp/kernels/cpu/dropout.py):
Philox4x32-10's published answers, the mask's layout over the words, its keep rate, and the
layer drawing from the same keys the same mask whatever the batch holds.

The GPU kernel's masks are compared with the CPU kernel's under the CUDA simulator
(tests/gpu_sim_checks.py, test_dropout_mask) and on a real device by tests/test_gpu.py."""
import numpy as np
import pytest

from layers import Dropout
from minispp.kernels.cpu.dropout import dropout_mask
from minispp.kernels.philox import keep_threshold, philox4x32_10

# Random123's known answers for Philox4x32-10: counter (4 words), key (2 words) -> 4 words
KNOWN = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,words", KNOWN)
def test_philox_known_answers(counter, key, words):
    got = philox4x32_10(*(np.uint64(v) for v in counter + key))
    assert [int(w) for w in got] == list(words)


def test_mask_is_the_philox_words_of_each_rows_key():
    """Element j of row n: word j % 4 of counter (j // 4, 0, 0, 0) under key n (low 32 bits
    first), kept when >= the threshold; 10 units, so the last group is cut short."""
    keys = np.array([0, 0x299F31D0A4093822, 2 ** 64 - 1], dtype=np.uint64)
    ratio = 0.5
    mask = np.empty((3, 10), np.float64)
    dropout_mask(keys, keep_threshold(ratio), 2.0, mask)
    want = np.empty_like(mask)
    for n, key in enumerate(int(k) for k in keys):
        for j in range(10):
            words = philox4x32_10(np.uint64(j // 4), *(np.uint64(0),) * 3,
                                  np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32))
            want[n, j] = 2.0 if int(words[j % 4]) >= 2 ** 31 else 0.0
    np.testing.assert_array_equal(mask, want)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_keep_rate_and_independence(ratio):
    """Over 64 x 4096 units the kept fraction is 1 - ratio within 5 standard deviations, and
    neighbouring units (in one word group and across groups) are uncorrelated."""
    keys = np.random.default_rng(1).integers(0, 2 ** 64 - 1, 64, dtype=np.uint64, endpoint=True)
    mask = np.empty((64, 4096), np.float32)
    dropout_mask(keys, keep_threshold(ratio), np.float32(1.0), mask)
    p, n = 1.0 - ratio, mask.size
    assert abs(mask.mean() - p) < 5 * np.sqrt(p * ratio / n)
    a = mask - mask.mean()
    for lag in (1, 4):
        corr = (a[:, lag:] * a[:, :-lag]).mean() / a.var()
        assert abs(corr) < 5 / np.sqrt(n)
    rows = np.corrcoef(mask[:8])[np.triu_indices(8, 1)]
    assert np.abs(rows).max() < 0.1


def test_threshold_edges():
    assert keep_threshold(0.0) == 0                          # every word kept
    assert keep_threshold(0.5) == 2 ** 31
    keys = np.arange(4, dtype=np.uint64)
    mask = np.empty((4, 9), np.float32)
    dropout_mask(keys, keep_threshold(0.0), np.float32(1.0), mask)
    assert (mask == 1).all()


def test_layer_masks_from_keys_equal_the_kernels_and_its_scale():
    d = Dropout(0.4)
    d.setup((2, 2, 3, 3))
    d.key_masks((7, 5, 0, 1), [11, 3])
    x = np.ones((2, 2, 3, 3), np.float32)
    y = d.forward(x, train=True)
    keys = d.row_keys(2)
    want = np.empty((2, 18), np.float32)
    dropout_mask(keys, keep_threshold(0.4), np.float32(1 / 0.6), want)
    np.testing.assert_array_equal(y.reshape(2, -1), want)
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.6)}
    again = Dropout(0.4)
    again.key_masks((7, 5, 0, 1), [3])
    np.testing.assert_array_equal(again.forward(x[:1], train=True)[0], y[1])


def test_generator_keys_follow_the_generator_and_frozen_masks_stay():
    a = Dropout(0.5, rng=np.random.default_rng(3))
    b = Dropout(0.5, rng=np.random.default_rng(3))
    x = np.ones((5, 33))
    first = a.forward(x, train=True)
    np.testing.assert_array_equal(first, b.forward(x, train=True))
    assert not np.array_equal(first, a.forward(x, train=True))   # the next draw differs
    a.freeze()
    np.testing.assert_array_equal(a.forward(x, train=True), a.forward(x, train=True))
    a.freeze(np.eye(5, 33))
    np.testing.assert_array_equal(a.forward(x, train=True), 2 * np.eye(5, 33))


def test_runs_recorded_before_philox_keep_their_host_draws():
    """A run whose config lacks the Philox generator (recorded before it) keeps the masks it
    began with: u ~ U[0, 1) per unit from default_rng(base + (index,)), kept where u >= ratio;
    a new run's config names Philox and its layers draw with it."""
    from types import SimpleNamespace

    from train.classify.trainer import PER_IMAGE, PHILOX, Trainer
    net = SimpleNamespace(layers=[Dropout(0.5), Dropout(0.5)])
    x = np.ones((2, 12), np.float32)
    old = SimpleNamespace(cfg={"seed": 4, "dropout_masks": PER_IMAGE})
    Trainer._key_dropout(old, net, 3, [8, 1])
    assert [layer.generator for layer in net.layers] == ["numpy", "numpy"]
    want = np.stack([(np.random.default_rng((4, 5, 3, 1, i)).random(12, dtype=np.float32) >= 0.5)
                     for i in (8, 1)]) * np.float32(2)
    np.testing.assert_array_equal(net.layers[1].forward(x, train=True), want)
    new = SimpleNamespace(cfg={"seed": 4, "dropout_masks": PER_IMAGE, "dropout_generator": PHILOX})
    Trainer._key_dropout(new, net, 3, [8, 1])
    assert [layer.generator for layer in net.layers] == ["philox", "philox"]
    assert not np.array_equal(net.layers[1].forward(x, train=True), want)
