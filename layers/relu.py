"""Rectified linear unit, after every conv and fc layer (paper Sec. 3.1.1)."""
import numpy as np

from minispp.layer import Layer


class ReLU(Layer):
    """y = max(x, 0); dx = dy where x > 0, else 0. x: any shape (N, ...).

    Backward reads the mask from the output (y > 0 exactly where x > 0), so forward keeps a
    reference to y and computes nothing extra; layers never modify their inputs in place."""

    prefix = "relu"
    rank = None

    def __init__(self, name=None):
        super().__init__(name)
        self.y = None

    def infer_shape(self, in_shape):
        return in_shape

    def forward(self, x, train=True):
        x = self.accept(x)
        self.y = np.maximum(x, 0)
        return self.y

    def backward(self, dy):
        self.require_forward("y")
        if dy.shape != self.y.shape:
            raise ValueError(f"{self._who()}: dy has shape {dy.shape}, expected {self.y.shape}")
        return np.where(self.y > 0, dy, 0).astype(dy.dtype, copy=False)
