"""SGD with momentum and weight decay, and the plateau schedule."""
import numpy as np
import pytest

from minispp import Params
from minispp.solver import SGD, PlateauSchedule


def test_sgd_step_matches_the_formula():
    params = Params(np.float64)
    w = params.get_or_create("fc.W", (3,), lambda s: np.array([1.0, -2.0, 0.5]))
    b = params.get_or_create("fc.b", (1,), lambda s: np.array([0.3]), lr_mult=2.0, decay_mult=0.0)
    sgd = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    w.grad[...] = [0.5, 0.0, -1.0]
    b.grad[...] = [1.0]
    sgd.step()
    v1 = 0.1 * (np.array([0.5, 0.0, -1.0]) + 0.01 * np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(w.value, np.array([1.0, -2.0, 0.5]) - v1)
    np.testing.assert_allclose(b.value, [0.3 - 0.2 * 1.0])       # 2x rate, no decay
    w0 = w.value.copy()
    sgd.step()                                                   # same gradient again
    v2 = 0.9 * v1 + 0.1 * (np.array([0.5, 0.0, -1.0]) + 0.01 * w0)
    np.testing.assert_allclose(w.value, w0 - v2)
    np.testing.assert_allclose(w.state["momentum"], v2)


def test_release_training_state_drops_gradients_and_momentum_and_keeps_values():
    params = Params(np.float32)
    w = params.get_or_create("fc.W", (1000,), lambda s: np.ones(s, np.float32))
    sgd = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.0)
    w.grad[...] = 1.0
    sgd.step()
    old_grad, value = w.grad, w.value.copy()
    assert "momentum" in w.state
    params.release_training_state()
    assert w.state == {} and w.grad is not old_grad and not w.grad.any()
    assert w.grad.shape == w.value.shape and w.grad.dtype == w.value.dtype
    np.testing.assert_array_equal(w.value, value)
    w.grad[...] = 1.0                        # training can start again, momentum from zero
    sgd.step()
    np.testing.assert_allclose(w.value, value - 0.1)


def test_sgd_rejects_bad_settings():
    with pytest.raises(ValueError, match="lr > 0"):
        SGD(Params(), lr=0)


def test_plateau_schedule_divides_by_ten_at_most_twice():
    params = Params()
    sgd = SGD(params, lr=0.01)
    sched = PlateauSchedule(patience=2)
    errors = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    lrs = []
    for e in errors:
        sched.update(sgd, e)
        lrs.append(round(sgd.lr, 6))
    assert lrs == [0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001]
    again = PlateauSchedule(patience=2)
    again.load(sched.state())
    assert again.state() == sched.state() == {"best": 0.7, "bad_epochs": 4, "drops": 2}
