"""Dropout on fc6 and fc7 (paper Sec. 3.1.1), inverted: kept units are scaled at training
time, so the layer is the identity at test time."""
import numpy as np

from minispp.backend import get_array_module
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
        self.keys = None           # per-sample mask keys (key_masks), or None
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
            self.mask = self.draw_mask(x.shape, x.dtype)
        return x * self.mask.astype(x.dtype, copy=False)

    def key_masks(self, base, indices):
        """Draw the masks of the following forwards per sample: row j from the Generator
        default_rng(base + (indices[j],)), so a sample's mask depends on its own key (the
        global image index, the epoch, the run's seed) and not on which other samples share
        its batch or which process runs it (README, "Beyond one machine"). None: back to
        the layer's one Generator."""
        self.keys = None if base is None else (tuple(int(v) for v in base),
                                               [int(i) for i in indices])

    def draw_mask(self, shape, dtype):
        """A new NumPy mask (keep / (1 - ratio)) of shape in dtype: per sample from the keys
        given to key_masks, else from the layer's Generator. The one place masks are drawn
        (the GPU body copies this mask to the device)."""
        keys = getattr(self, "keys", None)
        if keys is not None:
            base, indices = keys
            if len(indices) != shape[0]:
                raise ValueError(f"{self._who()}: {len(indices)} mask keys for a batch of {shape[0]}")
            u = np.empty(shape, dtype=np.float32)
            for j, i in enumerate(indices):
                u[j] = np.random.default_rng(base + (i,)).random(shape[1:], dtype=np.float32)
        elif self.rng is None:
            raise ValueError(f"{self._who()}: no random Generator; pass rng= to Dropout or setup")
        else:
            u = self.rng.random(shape, dtype=np.float32)
        return (u >= self.ratio).astype(dtype) / np.dtype(dtype).type(1.0 - self.ratio)

    def _backward_cpu(self, dy, propagate_down=True):
        if not self._forward_train:          # the last forward was the test-time identity
            return dy.copy()
        return dy * self.mask.astype(dy.dtype, copy=False)

    # -- GPU bodies: the mask is draw_mask's, as on the CPU (the same Generator or keys, the
    # same values), copied to the device once per draw; the products are the array module's.
    def _forward_gpu(self, x, train=True):
        if not train:
            return x.copy()
        if not (self.frozen and self.mask is not None and self.mask.shape == x.shape):
            self.mask = self.draw_mask(x.shape, x.dtype)
        return x * self._mask_on_device(x)

    def _backward_gpu(self, dy, propagate_down=True):
        if not self._forward_train:
            return dy.copy()
        return dy * self._mask_on_device(dy)

    def _mask_on_device(self, like):
        """self.mask in like's dtype on like's device (copied when the host mask changed)."""
        cached = self.__dict__.get("_device_mask")
        if cached is None or cached[0] is not self.mask or cached[1].dtype != like.dtype:
            xp = get_array_module(like)
            cached = (self.mask, xp.asarray(self.mask.astype(like.dtype, copy=False)))
            self._device_mask = cached
        return cached[1]
