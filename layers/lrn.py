"""Local response normalization across channels (Krizhevsky et al.; paper Table 1)."""
import numpy as np

from minispp.backend import get_array_module
from minispp.kernels.cpu.lrn import lrn_backward, lrn_forward
from minispp.layer import Layer


class LRN(Layer):
    """Cross-channel LRN, the Caffe convention (alpha divided by size):

        y[n, c, h, w] = x[n, c, h, w] / (k + (alpha / size) * sum_j x[n, j, h, w]^2) ^ beta

    with j over the `size` channels c - size//2 .. c + (size-1)//2 that exist (centred for odd
    sizes; PyTorch's local_response_norm uses the same window and convention). ZF-5 and
    Convnet*-5 use size 5, alpha 1e-4, beta 0.75, k 1 (cuda-convnet's layer in that lineage
    multiplies alpha the same way).

    x: (N, C, H, W) -> y: same shape. Forward keeps scale and scale^-beta; backward is the
    exact analytic gradient (see minispp/kernels/cpu/lrn.py for the formula). GPU bodies: the
    numba.cuda twins (minispp/kernels/gpu/lrn.py), equal to float32 rounding.
    """

    prefix = "norm"
    lean_at_test = True      # a test-time forward keeps only its input (minispp.Layer)
    saves = ("x3", "scale", "inv")

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0, name=None):
        super().__init__(name)
        if int(size) != size or size < 1:
            raise ValueError(f"LRN size must be a positive integer, got {size!r}")
        if k <= 0 or alpha < 0:
            raise ValueError(f"LRN needs k > 0 and alpha >= 0, got k={k}, alpha={alpha}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def infer_shape(self, in_shape):
        return in_shape

    def _forward_cpu(self, x, train=True):
        x = np.ascontiguousarray(x)
        N, C, H, W = x.shape
        x3 = x.reshape(N, C, H * W)
        y = np.empty_like(x3)
        # training reuses the layer's buffers; a test-time forward keeps nothing (conv.py)
        scale = self.scratch("scale", x3.shape, x3.dtype) if train else np.empty_like(x3)
        inv = self.scratch("inv", x3.shape, x3.dtype) if train else np.empty_like(x3)
        alpha, beta, k = (x.dtype.type(v) for v in (self.alpha, self.beta, self.k))
        lrn_forward(x3, self.size, alpha, beta, k, y, scale, inv)
        self.save(**(dict(x3=x3, scale=scale, inv=inv) if train else dict(x3=None, scale=None, inv=None)))
        return y.reshape(x.shape)

    def _backward_cpu(self, dy, propagate_down=True):
        x3, scale, inv = self.saved.x3, self.saved.scale, self.saved.inv
        if x3 is None:
            raise RuntimeError(f"{self._who()}: backward needs a train=True forward")
        dy3 = np.ascontiguousarray(dy, dtype=x3.dtype).reshape(x3.shape)
        dx, ratio = np.empty_like(x3), self.scratch("ratio", x3.shape, x3.dtype)
        alpha, beta = x3.dtype.type(self.alpha), x3.dtype.type(self.beta)
        lrn_backward(x3, dy3, scale, inv, self.size, alpha, beta, dx, ratio)
        return dx.reshape(self.in_shape)

    def _forward_gpu(self, x, train=True):
        from minispp.kernels.gpu.lrn import lrn_forward as forward
        xp = get_array_module(x)
        N, C, H, W = x.shape
        x3 = xp.ascontiguousarray(x).reshape(N, C, H * W)
        y = xp.empty_like(x3)
        scale = self.scratch("scale", x3.shape, x3.dtype, xp) if train else xp.empty_like(x3)
        inv = self.scratch("inv", x3.shape, x3.dtype, xp) if train else xp.empty_like(x3)
        forward(x3, self.size, self.alpha, self.beta, self.k, y, scale, inv)
        self.save(**(dict(x3=x3, scale=scale, inv=inv) if train else dict(x3=None, scale=None, inv=None)))
        return y.reshape(x.shape)

    def _backward_gpu(self, dy, propagate_down=True):
        from minispp.kernels.gpu.lrn import lrn_backward as backward
        xp = get_array_module(dy)
        x3, scale, inv = self.saved.x3, self.saved.scale, self.saved.inv
        dy3 = xp.ascontiguousarray(dy, dtype=x3.dtype).reshape(x3.shape)
        dx, ratio = xp.empty_like(x3), self.scratch("ratio", x3.shape, x3.dtype, xp)
        backward(x3, dy3, scale, inv, self.size, self.alpha, self.beta, dx, ratio)
        return dx.reshape(self.in_shape)
