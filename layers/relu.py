"""Rectified linear unit, after every conv and fc layer (paper Sec. 3.1.1)."""
from minispp.backend import get_array_module
from minispp.layer import Layer


class ReLU(Layer):
    """y = max(x, 0); dx = dy where x > 0, else 0. x: any shape (N, ...).

    Backward reads the mask from the output (y > 0 exactly where x > 0), so forward keeps a
    reference to y and computes nothing extra; layers never modify their inputs in place.
    One body for both devices: two elementwise ops of the array module (NumPy or CuPy)."""

    prefix = "relu"
    lean_at_test = True      # a test-time forward keeps only its input (minispp.Layer)
    rank = None
    saves = ("y",)

    def infer_shape(self, in_shape):
        return in_shape

    def _forward_cpu(self, x, train=True):
        y = get_array_module(x).maximum(x, 0)
        self.save(y=y if train else None)       # a test-time forward keeps nothing (conv.py)
        return y

    def _backward_cpu(self, dy, propagate_down=True):
        if self.saved.y is None:
            raise RuntimeError(f"{self._who()}: backward needs a train=True forward")
        xp = get_array_module(dy)
        return xp.where(self.saved.y > 0, dy, 0).astype(dy.dtype, copy=False)

    _forward_gpu = _forward_cpu
    _backward_gpu = _backward_cpu
