"""Stochastic gradient descent and the paper's learning-rate schedule (Sec. 3.1).

SGD with momentum 0.9 and weight decay 0.0005 (the values of the works the paper follows),
per-parameter multipliers from the network definition (biases: 2x rate, no decay). The rate
starts at 0.01 and is divided by 10 when the validation error plateaus, at most twice.
All state (momentum buffers in Params, the schedule's counters) goes into checkpoints.
The update runs where the parameters are: the Numba kernel on the CPU, its numba.cuda twin
(minispp/kernels/gpu/sgd.py) on the GPU.
"""
import numpy as np

from .backend import get_array_module
from .kernels.cpu.sgd import sgd_momentum_update


class SGD:
    """params: the Params store. lr: base learning rate. Momentum buffers live in each
    Param's state["momentum"], so checkpoints carry them."""

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=5e-4):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"SGD needs lr > 0, 0 <= momentum < 1, weight_decay >= 0; got "
                             f"{lr}, {momentum}, {weight_decay}")
        self.params, self.lr = params, float(lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def step(self):
        """w <- w - (momentum v + lr lr_mult (grad + weight_decay decay_mult w))."""
        for p in self.params.values():
            xp = get_array_module(p.value)
            v = p.state.get("momentum")
            if v is None:
                v = p.state["momentum"] = xp.zeros_like(p.value)
            if xp is np:
                update = sgd_momentum_update
            else:
                from .kernels.gpu.sgd import sgd_momentum_update as update
            dt = p.value.dtype.type
            update(p.value.reshape(-1), p.grad.reshape(-1), v.reshape(-1),
                   dt(self.lr * p.lr_mult), dt(self.momentum), dt(self.weight_decay * p.decay_mult))


class PlateauSchedule:
    """Divide the rate by `factor` when the validation error has not improved by
    `min_delta` for `patience` epochs; at most `max_drops` times (the paper: twice)."""

    def __init__(self, patience=3, factor=10.0, max_drops=2, min_delta=1e-3):
        self.patience, self.factor = int(patience), float(factor)
        self.max_drops, self.min_delta = int(max_drops), float(min_delta)
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0

    def update(self, solver, val_error):
        """Record one epoch's validation error; lower solver.lr on a plateau. Returns True
        when the rate was lowered."""
        if val_error < self.best - self.min_delta:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and self.drops < self.max_drops:
            solver.lr /= self.factor
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load(self, state):
        self.best, self.bad_epochs, self.drops = state["best"], state["bad_epochs"], state["drops"]
