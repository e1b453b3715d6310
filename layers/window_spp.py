"""SPP pooling of many windows on one image's feature map (paper Sec. 4.1, Appendix):
the detector computes conv5 once per image and pools every proposal from it."""
import numpy as np

from minispp.backend import get_array_module, to_numpy
from minispp.geometry import check_cell_windows, spp_output_length, window_to_feature_map
from minispp.kernels.cpu.spp import spp_backward, spp_forward
from minispp.layer import Layer
from minispp.pyramid import Pyramid, check_levels


class WindowSPP(Layer):
    """Spatial pyramid max pooling of R windows of one feature map.

    levels: e.g. (6, 3, 2, 1). Bins are the Appendix floor/ceil form over each window.
    feature_stride: None when windows are given in feature-map cells; else S (16 for ZF-5
    conv5), and windows are image pixels projected with the Appendix rule
    (minispp.geometry.window_to_feature_map, with ``offset`` pixels when the net's padding is
    not floor(p/2)). A window narrower than S is shrunk to one cell, never an empty bin.

    forward(x, windows, train): x (1, C, H, W); windows (R, 4) x1 y1 x2 y2, inclusive cells
    (or pixels, see above) -> y (R, C * sum n^2), each row laid out as the SPP layer's.
    backward(dy) -> dx (1, C, H, W): gradients of every window added into the one map.
    GPU bodies: the windows are projected and checked on the host (R x 4 numbers), their bins
    copied to the device, and all R windows pooled in ONE launch of the numba.cuda kernel of
    minispp/kernels/gpu/spp.py (not a loop of launches).
    """

    prefix = "window_spp"
    n_inputs = 2          # the feature map and the windows
    saves = ("pyramid", "argmax")
    argmax_layer = True

    def __init__(self, levels=(6, 3, 2, 1), feature_stride=None, offset=0.0, name=None):
        super().__init__(name)
        self.levels = check_levels(levels)
        self.feature_stride = feature_stride
        self.offset = float(offset)

    def infer_shape(self, in_shape):
        N, C, H, W = in_shape
        if N != 1:
            raise ValueError(f"{self._who()}: pools windows of one image, got a batch of {N} "
                             f"maps {in_shape}")
        return (0, spp_output_length(self.levels, C))   # row count set by each forward

    def cells(self, windows):
        """The windows in validated inclusive feature-map cells, (R, 4) int64."""
        H, W = self.in_shape[2], self.in_shape[3]
        if self.feature_stride is not None:
            w = np.asarray(windows, dtype=np.float64)
            if w.ndim != 2 or w.shape[1] != 4 or len(w) == 0:
                raise ValueError(f"{self._who()}: windows must have shape (R, 4) with R >= 1, "
                                 f"got {w.shape}")
            windows = window_to_feature_map(w, self.feature_stride, (H, W), self.offset)
        return check_cell_windows(windows, (H, W))

    def _forward_cpu(self, x, windows, train=True):
        x = np.ascontiguousarray(x)
        cells = self.cells(windows)
        p = Pyramid(self.levels, cells, x.shape[1])
        R = len(cells)
        img = np.zeros(R, dtype=np.int64)
        y = np.empty((R, p.length), x.dtype)
        argmax = np.empty((R, p.length) if train else (1, 1), np.int32)
        spp_forward(x, img, *p.bins, p.levels, p.lofs, p.outofs, p.src, p.order, y, argmax,
                    train)
        self.out_shape = y.shape
        self.save(pyramid=p, argmax=argmax if train else None)
        return y

    def _backward_cpu(self, dy, propagate_down=True):
        _, C, H, W = self.in_shape
        p = self.saved.pyramid
        dx = np.empty((1, C, H * W), dy.dtype)
        spp_backward(np.ascontiguousarray(dy), self.saved.argmax, np.zeros(len(dy), np.int64),
                     p.levels, p.outofs, dx)
        return dx.reshape(self.in_shape)

    def _forward_gpu(self, x, windows, train=True):
        from minispp.kernels.gpu.spp import spp_forward as forward
        xp = get_array_module(x)
        cells = self.cells(to_numpy(windows))
        p = Pyramid(self.levels, cells, x.shape[1])
        R = len(cells)
        y = xp.empty((R, p.length), x.dtype)
        argmax = xp.empty((R, p.length) if train else (1, 1), np.int32)
        forward(xp.ascontiguousarray(x), xp.zeros(R, np.int64), *p.device_bins(xp), p.levels,
                p.lofs, p.outofs, p.src, p.order, y, argmax, train)
        self.out_shape = y.shape
        self.save(pyramid=p, argmax=argmax if train else None)
        return y

    def _backward_gpu(self, dy, propagate_down=True):
        from minispp.kernels.gpu.spp import spp_backward as backward
        xp = get_array_module(dy)
        _, C, H, W = self.in_shape
        p = self.saved.pyramid
        dx = xp.empty((1, C, H * W), dy.dtype)
        backward(xp.ascontiguousarray(dy), self.saved.argmax, xp.zeros(len(dy), np.int64),
                 p.levels, p.outofs, dx)
        return dx.reshape(self.in_shape)
