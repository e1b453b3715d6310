"""Dropout on fc6 and fc7 (paper Sec. 3.1.1), inverted: kept units are scaled at training
time, so the layer is the identity at test time."""
import numpy as np

from minispp.backend import get_array_module, to_numpy
from minispp.kernels.philox import keep_threshold
from minispp.layer import Layer


class Dropout(Layer):
    """y = x * mask, mask = keep / (1 - ratio), each unit kept with probability 1 - ratio.

    ratio: drop probability. rng: the numpy Generator the masks' row keys are drawn from (or
    pass one to setup; key_masks keys them per sample instead). Each row's units come from a
    counter-based generator (Philox4x32-10) under its key, on the array's own device.
    forward(x, train=False) is the identity. ``freeze()`` keeps the current mask for every
    later forward (a fixed mask, as a gradient check needs); ``unfreeze()`` draws again.
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
        # "philox": masks from Philox4x32-10 words on the array's device (draw_mask);
        # "numpy": the host draws of runs recorded before them (resumed as they began)
        self.generator = "philox"

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
        return x * self._mask_like(x)

    def key_masks(self, base, indices):
        """Key the masks of the following forwards per sample: row j's 64-bit key comes from
        SeedSequence(base + (indices[j],)), so a sample's mask depends on its own key (the
        global image index, the epoch, the run's seed) and not on which other samples share
        its batch or which process runs it (README, "Beyond one machine"). None: back to
        keys drawn from the layer's one Generator."""
        self.keys = None if base is None else (tuple(int(v) for v in base),
                                               [int(i) for i in indices])

    def row_keys(self, n):
        """(n,) uint64: one key a row of the next mask, from the keys given to key_masks, else
        n draws from the layer's Generator (the only host-side randomness of a mask)."""
        keys = getattr(self, "keys", None)
        if keys is not None:
            base, indices = keys
            if len(indices) != n:
                raise ValueError(f"{self._who()}: {len(indices)} mask keys for a batch of {n}")
            return np.array([np.random.SeedSequence(base + (i,)).generate_state(1, np.uint64)[0]
                             for i in indices], dtype=np.uint64)
        if self.rng is None:
            raise ValueError(f"{self._who()}: no random Generator; pass rng= to Dropout or setup")
        return self.rng.integers(0, 2 ** 64 - 1, size=n, dtype=np.uint64, endpoint=True)

    def draw_mask(self, shape, dtype, xp=np):
        """A new mask (keep / (1 - ratio), else 0) of shape in dtype, on xp's device: element
        j of row n is kept when Philox4x32-10 word j of key row_keys[n] is at least
        keep_threshold(ratio) (minispp/kernels/philox.py). The CPU and the GPU kernels draw
        the same words, so both devices give the same mask from the same keys; on the GPU the
        mask is drawn on the device and only the keys are copied there."""
        if self.generator == "numpy":
            mask = self._numpy_mask(shape, dtype)
            return mask if xp is np else xp.asarray(mask)
        keys = self.row_keys(shape[0])
        mask = xp.empty(shape, dtype)
        scale = np.dtype(dtype).type(1.0 / (1.0 - self.ratio))
        if xp is np:
            from minispp.kernels.cpu.dropout import dropout_mask
        else:
            from minispp.kernels.gpu.dropout import dropout_mask
            keys = xp.asarray(keys)
        dropout_mask(keys, keep_threshold(self.ratio), scale,
                     mask.reshape(shape[0], int(np.prod(shape[1:]))))
        return mask

    def _numpy_mask(self, shape, dtype):
        """The masks of runs recorded before the Philox masks, drawn on the host: u ~ U[0, 1)
        per unit from default_rng(base + (index,)) per sample (key_masks), else from the
        layer's Generator; kept where u >= ratio."""
        keys = getattr(self, "keys", None)
        if keys is not None:
            base, indices = keys
            if len(indices) != shape[0]:
                raise ValueError(f"{self._who()}: {len(indices)} mask keys for a batch of "
                                 f"{shape[0]}")
            u = np.empty(shape, dtype=np.float32)
            for j, i in enumerate(indices):
                u[j] = np.random.default_rng(base + (i,)).random(shape[1:], dtype=np.float32)
        elif self.rng is None:
            raise ValueError(f"{self._who()}: no random Generator; pass rng= to Dropout or setup")
        else:
            u = self.rng.random(shape, dtype=np.float32)
        return (u >= self.ratio).astype(dtype) / np.dtype(dtype).type(1.0 - self.ratio)

    def _mask_like(self, like):
        """self.mask in like's dtype on like's device: the mask itself when it already is, else
        a converted copy kept until the mask changes (a frozen host mask on the GPU)."""
        xp = get_array_module(like)
        if get_array_module(self.mask) is xp and self.mask.dtype == like.dtype:
            return self.mask
        cached = self.__dict__.get("_converted_mask")
        if cached is None or cached[0] is not self.mask or cached[1].dtype != like.dtype \
                or get_array_module(cached[1]) is not xp:
            host = to_numpy(self.mask).astype(like.dtype, copy=False)
            cached = (self.mask, host if xp is np else xp.asarray(host))
            self._converted_mask = cached
        return cached[1]

    def _backward_cpu(self, dy, propagate_down=True):
        if not self._forward_train:          # the last forward was the test-time identity
            return dy.copy()
        return dy * self._mask_like(dy)

    # -- GPU bodies: the mask is drawn on the device by the Philox kernel from the same keys
    # as on the CPU (the same values); the products are the array module's.
    def _forward_gpu(self, x, train=True):
        if not train:
            return x.copy()
        if not (self.frozen and self.mask is not None and self.mask.shape == x.shape):
            self.mask = self.draw_mask(x.shape, x.dtype, get_array_module(x))
        return x * self._mask_like(x)

    def _backward_gpu(self, dy, propagate_down=True):
        if not self._forward_train:
            return dy.copy()
        return dy * self._mask_like(dy)
