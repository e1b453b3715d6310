"""Convolution as im2col + one GEMM (paper Sec. 3.1.1, Table 1: conv1..conv7)."""
import numpy as np

from minispp.backend import get_array_module
from minispp.kernels.cpu.im2col import col2im, gemm_to_nchw, im2col, nchw_to_gemm
from minispp.layer import Layer, as_pair

# The largest im2col buffer a test-time forward builds at once (bytes); larger maps are
# convolved in bands of output rows (Conv._forward_bands).
WORKSPACE_BYTES = 256 << 20


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
        dx = col2im(dcol)     (skipped when propagate_down is False: a net's conv1)
    A test-time forward whose col would exceed WORKSPACE_BYTES runs in bands of output rows.

    GPU bodies (CuPy arrays): cuDNN's fprop, dgrad and wgrad through the cuDNN Frontend for
    float32 where it is installed (minispp/kernels/gpu/cudnn_conv.py; x kept for wgrad);
    otherwise, and for float64, the same im2col + GEMM as above with the numba.cuda im2col /
    col2im kernels and cuBLAS (CuPy's matmul).
    """

    prefix = "conv"
    lean_at_test = True      # a test-time forward keeps only its input (minispp.Layer)
    has_params = True
    saves = ("col", "x")          # x: cuDNN's wgrad reads the input, im2col's the col

    def __init__(self, out_channels, kernel, stride=1, pad=0, name=None, std=None, bias=0.0,
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

    def _forward_cpu(self, x, train=True):
        N, C, H, W = x.shape
        _, F, Ho, Wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        W2 = self.value_as("W", x.dtype).reshape(F, -1)
        b = self.value_as("b", x.dtype)
        rows = self.band_rows(x.dtype)
        if not train and rows < Ho:
            return self._forward_bands(x, W2, b, rows)
        # training reuses the layer's own buffers step after step; a test-time forward uses
        # temporary ones and keeps nothing, so that the many cached instances of a model (one
        # per full-image size) do not each hold their conv columns (docs/design.md, "Memory")
        shape_col, shape_y2 = (C * kh * kw, N * Ho * Wo), (F, N * Ho * Wo)
        col = self.scratch("col", shape_col, x.dtype) if train else np.empty(shape_col, x.dtype)
        im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, col)
        y2 = self.scratch("y2", shape_y2, x.dtype) if train else np.empty(shape_y2, x.dtype)
        np.dot(W2, col, out=y2)
        y = np.empty((N, F, Ho * Wo), x.dtype)
        gemm_to_nchw(y2, b, y)
        self.save(col=col if train else None)
        return y.reshape(N, F, Ho, Wo)

    def band_rows(self, dtype):
        """Output rows per im2col band so that the column buffer stays within
        WORKSPACE_BYTES: all of them for the usual sizes, fewer for a very large map."""
        N, C = self.in_shape[:2]
        Wo = self.out_shape[3]
        row_bytes = C * self.kernel[0] * self.kernel[1] * N * Wo * np.dtype(dtype).itemsize
        return max(1, min(self.out_shape[2], WORKSPACE_BYTES // max(1, row_bytes)))

    def _forward_bands(self, x, W2, b, rows):
        """Test-time forward of a large map in bands of output rows: the input is padded
        once and each band's im2col covers only the input rows it reads, so memory is
        bounded by WORKSPACE_BYTES whatever the map's size. Same values as the whole GEMM."""
        N, C, H, W = x.shape
        _, F, Ho, Wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        y = np.empty((N, F, Ho, Wo), x.dtype)
        col = np.empty((C * kh * kw, N * rows * Wo), x.dtype)
        out = np.empty((N, F, rows * Wo), x.dtype)
        for r0 in range(0, Ho, rows):
            r = min(rows, Ho - r0)
            band = np.ascontiguousarray(xp_[:, :, r0 * sh:(r0 + r - 1) * sh + kh])
            c = col[:, :N * r * Wo]
            im2col(band, kh, kw, sh, sw, 0, 0, r, Wo, c)
            o = out[:, :, :r * Wo]
            gemm_to_nchw(W2 @ c, b, o)
            y[:, :, r0:r0 + r] = o.reshape(N, F, r, Wo)
        return y

    def _backward_cpu(self, dy, propagate_down=True):
        col = self.saved.col
        if col is None:
            raise RuntimeError(f"{self._who()}: backward needs a train=True forward")
        N, C, H, W = self.in_shape
        _, F, Ho, Wo = self.out_shape
        dy = np.ascontiguousarray(dy, dtype=col.dtype)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        dy2 = self.scratch("dy2", (F, N * Ho * Wo), dy.dtype)
        db = np.empty(F, dy.dtype)
        nchw_to_gemm(dy.reshape(N, F, Ho * Wo), dy2, db)
        self.add_grad("W", np.dot(dy2, col.T).reshape(F, C, kh, kw))
        self.add_grad("b", db)
        if not propagate_down:          # a net's first layer: no gradient of the image
            return None
        W2 = self.value_as("W", dy.dtype).reshape(F, -1)
        dcol = np.dot(W2.T, dy2, out=self.scratch("dcol", col.shape, dy.dtype))
        dx = np.empty(self.in_shape, dy.dtype)
        col2im(dcol, kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
        return dx

    # -- GPU bodies ---------------------------------------------------------------------
    def _forward_gpu(self, x, train=True):
        from minispp.kernels.gpu import cudnn_conv
        xp = get_array_module(x)
        x = xp.ascontiguousarray(x)
        F = self.out_channels
        W = xp.ascontiguousarray(self.value_as("W", x.dtype))
        b = self.value_as("b", x.dtype)
        built = cudnn_conv.usable(x) and self._cudnn_plan("fprop", train)
        if built:
            y = cudnn_conv.execute(built, x, W, xp.empty(self.out_shape, x.dtype))
            y += b.reshape(1, F, 1, 1)
            self.save(x=x if train else None)   # a reference: x is the caller's array
            return y
        N, _, Ho, Wo = self.out_shape
        col = self._im2col_gpu(x, xp, keep=train)
        y2 = W.reshape(F, -1) @ col                                 # (F, N Ho Wo), cuBLAS
        y = xp.empty((N, F, Ho * Wo), x.dtype)
        xp.add(y2.reshape(F, N, Ho * Wo).transpose(1, 0, 2), b.reshape(F, 1), out=y)
        self.save(col=col if train else None)   # lean at test time, as the CPU body
        return y.reshape(self.out_shape)

    def _backward_gpu(self, dy, propagate_down=True):
        from minispp.kernels.gpu import cudnn_conv
        from minispp.kernels.gpu.im2col import col2im
        xp = get_array_module(dy)
        x, col = self.saved.x, self.saved.col
        if x is None and col is None:
            raise RuntimeError(f"{self._who()}: backward needs a train=True forward")
        dtype = (x if x is not None else col).dtype
        dy = xp.ascontiguousarray(dy, dtype=dtype)
        N, C, H, W = self.in_shape
        _, F, Ho, Wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        Wt = xp.ascontiguousarray(self.value_as("W", dtype))
        self.add_grad("b", dy.sum(axis=(0, 2, 3)))
        if x is not None:                                           # the cuDNN forward ran
            self.add_grad("W", cudnn_conv.execute(self._cudnn_plan("wgrad"), x, dy,
                                                  xp.empty(Wt.shape, dtype)))
            if not propagate_down:
                return None
            return cudnn_conv.execute(self._cudnn_plan("dgrad"), dy, Wt,
                                      xp.empty(self.in_shape, dtype))
        dy2 = self.scratch("dy2", (F, N * Ho * Wo), dtype, xp)
        dy2.reshape(F, N, Ho * Wo)[...] = dy.reshape(N, F, Ho * Wo).transpose(1, 0, 2)
        self.add_grad("W", (dy2 @ col.T).reshape(F, C, kh, kw))
        if not propagate_down:
            return None
        dcol = Wt.reshape(F, -1).T @ dy2
        dx = xp.empty(self.in_shape, dtype)
        col2im(dcol, kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
        return dx

    def _im2col_gpu(self, x, xp, keep=True):
        from minispp.kernels.gpu.im2col import im2col
        N, C, H, W = x.shape
        _, _, Ho, Wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        shape = (C * kh * kw, N * Ho * Wo)
        col = self.scratch("col", shape, x.dtype, xp) if keep else xp.empty(shape, x.dtype)
        im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, col)
        return col

    def _cudnn_plan(self, op, train=True):
        """The cached cuDNN graph of op ("fprop", "dgrad", "wgrad") at this layer's shapes;
        None (fall back to im2col) where cuDNN cannot run it. A training forward goes through
        cuDNN only where both gradients can too; a test-time forward (detection, features:
        a new shape for nearly every image) builds its fprop graph alone."""
        from minispp.kernels.gpu import cudnn_conv
        shapes = (self.in_shape, (self.out_channels, self.in_shape[1]) + self.kernel,
                  self.out_shape, self.stride, self.pad)
        if op == "fprop" and train and not all(cudnn_conv.plan(o, *shapes)
                                               for o in ("dgrad", "wgrad")):
            return None
        return cudnn_conv.plan(op, *shapes)
