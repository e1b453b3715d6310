"""Convolution as im2col + one GEMM (paper Sec. 3.1.1, Table 1: conv1..conv7)."""
import numpy as np

from minispp.backend import require_cpu
from minispp.kernels.cpu.im2col import col2im, gemm_to_nchw, im2col, nchw_to_gemm
from minispp.layer import Layer, as_pair


class Conv(Layer):
    """2-D convolution, NCHW.

    out_channels: F filters. kernel, stride, pad: int or (h, w) pair; zero padding.
    std: Gaussian std of the weight init, or None for sqrt(2 / fan_in) with fan_in = C kh kw
    (He et al. 2015, the init for ReLU nets); bias: initial bias value. lr_mult, decay_mult:
    (weight, bias) multipliers kept with the parameters for the solver.

    x: (N, C, H, W) -> y: (N, F, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1.
    W: (F, C, kh, kw), b: (F,) in the Params store as "<name>.W" and "<name>.b".

    Forward: col = im2col(x): (C kh kw, N Ho Wo); Y = W2 @ col with W2 = W.reshape(F, -1).
    Backward: with dY2 = dy as (F, N Ho Wo),
        dW2 = dY2 @ col.T     db = sum of dy over (n, oh, ow)     dcol = W2.T @ dY2
        dx = col2im(dcol)
    """

    prefix = "conv"
    has_params = True

    def __init__(self, out_channels, kernel, stride=1, pad=0, name=None, std=0.01, bias=0.0,
                 lr_mult=(1.0, 2.0), decay_mult=(1.0, 0.0)):
        super().__init__(name)
        if int(out_channels) != out_channels or out_channels < 1:
            raise ValueError(f"out_channels must be a positive integer, got {out_channels!r}")
        self.out_channels = int(out_channels)
        self.kernel = as_pair(kernel, "kernel")
        if min(self.kernel) < 1:
            raise ValueError(f"kernel must be >= 1, got {kernel!r}")
        self.stride = as_pair(stride, "stride")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        self.pad = as_pair(pad, "pad")
        self.std, self.bias_value = (None if std is None else float(std)), float(bias)
        self.lr_mult, self.decay_mult = lr_mult, decay_mult
        self.col = None

    def create_params(self, in_shape, params, rng):
        kh, kw = self.kernel
        shape = (self.out_channels, in_shape[1], kh, kw)
        std = self.std if self.std is not None else np.sqrt(2.0 / (in_shape[1] * kh * kw))
        params.get_or_create(f"{self.name}.W", shape, lambda s: rng.normal(0.0, std, s),
                             self.lr_mult[0], self.decay_mult[0])
        params.get_or_create(f"{self.name}.b", (self.out_channels,),
                             lambda s: np.full(s, self.bias_value), self.lr_mult[1], self.decay_mult[1])
        self.param_names = (f"{self.name}.W", f"{self.name}.b")

    def infer_shape(self, in_shape):
        N, C, H, W = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if H + 2 * ph < kh or W + 2 * pw < kw:
            raise ValueError(f"{self._who()}: input {H}x{W} (padded {H + 2 * ph}x{W + 2 * pw}) is "
                             f"smaller than the {kh}x{kw} kernel")
        return (N, self.out_channels, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)

    def macs(self):
        """Multiply-accumulates per image: F C kh kw Ho Wo."""
        _, F, Ho, Wo = self.out_shape
        return F * self.in_shape[1] * self.kernel[0] * self.kernel[1] * Ho * Wo

    def forward(self, x, train=True):
        require_cpu(x, "Conv")
        x = self.accept(x)
        N, C, H, W = x.shape
        _, F, Ho, Wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        col = self.scratch("col", (C * kh * kw, N * Ho * Wo), x.dtype)
        im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, col)
        W2 = self.value_as("W", x.dtype).reshape(F, -1)
        y2 = np.dot(W2, col, out=self.scratch("y2", (F, N * Ho * Wo), x.dtype))
        y = np.empty((N, F, Ho * Wo), x.dtype)
        gemm_to_nchw(y2, self.value_as("b", x.dtype), y)
        self.col = col
        return y.reshape(N, F, Ho, Wo)

    def backward(self, dy):
        self.require_forward("col")
        N, C, H, W = self.in_shape
        _, F, Ho, Wo = self.out_shape
        if dy.shape != self.out_shape:
            raise ValueError(f"{self._who()}: dy has shape {dy.shape}, expected {self.out_shape}")
        dy = np.ascontiguousarray(dy, dtype=self.col.dtype)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        dy2 = self.scratch("dy2", (F, N * Ho * Wo), dy.dtype)
        db = np.empty(F, dy.dtype)
        nchw_to_gemm(dy.reshape(N, F, Ho * Wo), dy2, db)
        self.add_grad("W", np.dot(dy2, self.col.T).reshape(F, C, kh, kw))
        self.add_grad("b", db)
        W2 = self.value_as("W", dy.dtype).reshape(F, -1)
        dcol = np.dot(W2.T, dy2, out=self.scratch("dcol", self.col.shape, dy.dtype))
        dx = np.empty(self.in_shape, dy.dtype)
        col2im(dcol, kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
        return dx
