"""Dropout on fc6 and fc7 (paper Sec. 3.1.1), inverted: kept units are scaled at training
time, so the layer is the identity at test time."""
import numpy as np

from minispp.layer import Layer


class Dropout(Layer):
    """y = x * mask, mask = (u >= ratio) / (1 - ratio) with u ~ U[0, 1) from ``rng``.

    ratio: drop probability. rng: the numpy Generator masks are drawn from (or pass one to
    setup). forward(x, train=False) is the identity. ``freeze()`` keeps the current mask for
    every later forward (a fixed mask, as a gradient check needs); ``unfreeze()`` draws again.
    """

    prefix = "drop"
    rank = None

    def __init__(self, ratio=0.5, rng=None, name=None):
        super().__init__(name)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"dropout ratio must be in [0, 1), got {ratio!r}")
        self.ratio = float(ratio)
        self.rng = rng
        self.mask = None           # the current mask (kept by the layer: freeze() reuses it)
        self.frozen = False

    def setup(self, in_shape, params=None, rng=None):
        if rng is not None and self.rng is None:
            self.rng = rng
        return super().setup(in_shape, params, rng)

    def infer_shape(self, in_shape):
        return in_shape

    def freeze(self, keep=None):
        """Reuse one mask for every later forward: the last drawn one, or ``keep`` (a 0/1
        array of the input's shape, scaled here by 1 / (1 - ratio))."""
        if keep is not None:
            keep = np.asarray(keep)
            if self.in_shape is not None and keep.shape != self.in_shape:
                raise ValueError(f"{self._who()}: mask shape {keep.shape} != input {self.in_shape}")
            self.mask = (keep != 0) / (1.0 - self.ratio)
        if self.mask is None:
            raise RuntimeError(f"{self._who()}: no mask to freeze yet; run forward(train=True)")
        self.frozen = True

    def unfreeze(self):
        self.frozen = False

    def _forward_cpu(self, x, train=True):
        if not train:
            return x.copy()
        if not (self.frozen and self.mask is not None and self.mask.shape == x.shape):
            if self.rng is None:
                raise ValueError(f"{self._who()}: no random Generator; pass rng= to Dropout or setup")
            keep = self.rng.random(x.shape, dtype=np.float32) >= self.ratio
            self.mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.ratio)
        return x * self.mask.astype(x.dtype, copy=False)

    def _backward_cpu(self, dy, propagate_down=True):
        if not self._forward_train:          # the last forward was the test-time identity
            return dy.copy()
        return dy * self.mask.astype(dy.dtype, copy=False)
