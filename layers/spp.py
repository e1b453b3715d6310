"""The spatial pyramid pooling layer (paper Sec. 2.2-2.3, Fig. 3, Appendix)."""
import numpy as np

from minispp.backend import get_array_module
from minispp.geometry import FORMS, spp_output_length
from minispp.kernels.cpu.spp import spp_backward, spp_forward
from minispp.layer import Layer
from minispp.pyramid import Pyramid, check_levels


class SPP(Layer):
    """Spatial pyramid max pooling of a whole feature map to a fixed-length vector.

    levels: bins per side of each level, default (6, 3, 2, 1): 50 bins, 12,800 values for
    256 channels, whatever the map size. form: "appendix" (floor/ceil bins, any size; the
    default) or "fixed" (win = ceil(a/n), stride = floor(a/n), as a fixed-size network is
    trained in Sec. 2.3; needs a map at least as large as every level). See
    minispp.geometry for both, and ``python -m minispp.geometry 10 6`` for where they differ.

    x: (N, C, H, W) -> y: (N, C * sum n^2), level by level in the order given, each level
    channel-major (C, n, n) flattened. Backward routes each dy to its bin's argmax; bins may
    overlap, so gradients add. GPU bodies: one launch of the numba.cuda kernel of
    minispp/kernels/gpu/spp.py for every image, level, bin and channel, on the same bins.
    """

    prefix = "spp"
    saves = ("argmax",)
    argmax_layer = True

    def __init__(self, levels=(6, 3, 2, 1), form="appendix", name=None):
        super().__init__(name)
        self.levels = check_levels(levels)
        if form not in FORMS:
            raise ValueError(f"unknown SPP bin form {form!r}; expected one of {FORMS}")
        self.form = form
        self.pyramid = None

    def infer_shape(self, in_shape):
        N, C, H, W = in_shape
        return (N, spp_output_length(self.levels, C))

    def prepare(self, in_shape):
        N, C, H, W = in_shape
        whole = np.tile(np.array([[0, 0, W - 1, H - 1]], dtype=np.int64), (N, 1))
        try:
            self.pyramid = Pyramid(self.levels, whole, C, self.form)
        except ValueError as err:
            raise ValueError(f"{self._who()}: {H}x{W} feature map: {err}") from None
        self.img = np.arange(N, dtype=np.int64)

    def _forward_cpu(self, x, train=True):
        x = np.ascontiguousarray(x)
        p = self.pyramid
        y = np.empty(self.out_shape, x.dtype)
        argmax = self.scratch("argmax", self.out_shape if train else (1, 1), np.int32)
        spp_forward(x, self.img, *p.bins, p.levels, p.lofs, p.outofs, p.src, p.order, y,
                    argmax, train)
        self.save(argmax=argmax if train else None)
        return y

    def _backward_cpu(self, dy, propagate_down=True):
        N, C, H, W = self.in_shape
        dx = np.empty((N, C, H * W), dy.dtype)
        spp_backward(np.ascontiguousarray(dy), self.saved.argmax, self.img, self.pyramid.levels,
                     self.pyramid.outofs, dx)
        return dx.reshape(self.in_shape)

    def _forward_gpu(self, x, train=True):
        from minispp.kernels.gpu.spp import spp_forward as forward
        xp = get_array_module(x)
        p = self.pyramid
        y = xp.empty(self.out_shape, x.dtype)
        argmax = self.scratch("argmax", self.out_shape if train else (1, 1), np.int32, xp)
        forward(xp.ascontiguousarray(x), self._device_img(xp), *p.device_bins(xp), p.levels,
                p.lofs, p.outofs, p.src, p.order, y, argmax, train)
        self.save(argmax=argmax if train else None)
        return y

    def _backward_gpu(self, dy, propagate_down=True):
        from minispp.kernels.gpu.spp import spp_backward as backward
        xp = get_array_module(dy)
        N, C, H, W = self.in_shape
        dx = xp.empty((N, C, H * W), dy.dtype)
        backward(xp.ascontiguousarray(dy), self.saved.argmax, self._device_img(xp),
                 self.pyramid.levels, self.pyramid.outofs, dx)
        return dx.reshape(self.in_shape)

    def _device_img(self, xp):
        """self.img (the map of each window: image n for row n) on the device, copied once
        per size."""
        cached = self.__dict__.get("_img_device")
        if cached is None or cached[0] is not self.img or cached[1] is not xp:
            cached = self._img_device = (self.img, xp, xp.asarray(self.img))
        return cached[2]
