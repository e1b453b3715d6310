"""Rectified linear unit, after every conv and fc layer (paper Sec. 3.1.1)."""
import numpy as np

from minispp.layer import Layer


class ReLU(Layer):
    """y = max(x, 0); dx = dy where x > 0, else 0. x: any shape (N, ...)."""

    prefix = "relu"
    rank = None

    def __init__(self, name=None):
        super().__init__(name)
        self.positive = None

    def infer_shape(self, in_shape):
        return in_shape

    def forward(self, x, train=True):
        x = self.accept(x)
        self.positive = x > 0
        return np.maximum(x, 0)

    def backward(self, dy):
        self.require_forward("positive")
        if dy.shape != self.positive.shape:
            raise ValueError(f"{self._who()}: dy has shape {dy.shape}, expected {self.positive.shape}")
        return dy * self.positive
