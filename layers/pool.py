"""Max pooling with overlapping windows (paper Table 1: pool 3x3 stride 2, and others)."""
import numpy as np

from minispp.backend import get_array_module
from minispp.kernels.cpu.maxpool import max_scatter_backward, maxpool_forward
from minispp.layer import Layer, as_pair


def pooled_size(size, kernel, stride, pad, ceil_mode):
    """Output length of a pooling along one axis.

    floor mode: (size + 2 pad - kernel) // stride + 1 (cuDNN, PyTorch's default);
    ceil mode: ceil((size + 2 pad - kernel) / stride) + 1 (Caffe, cuda-convnet), minus one
    when the last window would start inside the right padding, so every window keeps at
    least one real cell.
    """
    span = size + 2 * pad - kernel
    if span < 0:
        raise ValueError(f"pooling window {kernel} is larger than the padded input {size + 2 * pad}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class MaxPool(Layer):
    """Max pooling, NCHW.

    kernel, stride, pad: int or (h, w) pair (pad must be smaller than the kernel).
    ceil_mode: round the output size up (Caffe, cuda-convnet) instead of down.

    x: (N, C, H, W) -> y: (N, C, Ho, Wo). Backward sends each dy to the input cell that won
    the forward max (argmax kept as int32 by a train=True forward; see Layer.backward for a
    backward after a test-time one); overlapping windows add up.
    GPU bodies: the numba.cuda twins (minispp/kernels/gpu/maxpool.py), same results bit for
    bit; the backward is a gather, one thread per input cell, in the CPU scatter's order.
    """

    prefix = "pool"
    saves = ("argmax",)
    argmax_layer = True

    def __init__(self, kernel, stride=None, pad=0, ceil_mode=False, name=None):
        super().__init__(name)
        self.kernel = as_pair(kernel, "kernel")
        self.stride = as_pair(stride if stride is not None else kernel, "stride")
        self.pad = as_pair(pad, "pad")
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise ValueError(f"kernel and stride must be >= 1, got {kernel!r}, {stride!r}")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise ValueError(f"pad {pad!r} must be smaller than the kernel {kernel!r}")
        self.ceil_mode = bool(ceil_mode)

    def infer_shape(self, in_shape):
        N, C, H, W = in_shape
        try:
            Ho = pooled_size(H, self.kernel[0], self.stride[0], self.pad[0], self.ceil_mode)
            Wo = pooled_size(W, self.kernel[1], self.stride[1], self.pad[1], self.ceil_mode)
        except ValueError as err:
            raise ValueError(f"{self._who()}: input {H}x{W}: {err}") from None
        return (N, C, Ho, Wo)

    def _forward_cpu(self, x, train=True):
        y = np.empty(self.out_shape, x.dtype)
        argmax = self.scratch("argmax", self.out_shape if train else (1, 1, 1, 1), np.int32)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, train)
        self.save(argmax=argmax if train else None)
        return y

    def _backward_cpu(self, dy, propagate_down=True):
        N, C, H, W = self.in_shape
        dy = np.ascontiguousarray(dy)
        dx = np.empty((N, C, H * W), dy.dtype)
        max_scatter_backward(dy.reshape(N, C, -1), self.saved.argmax.reshape(N, C, -1), dx)
        return dx.reshape(self.in_shape)

    def _forward_gpu(self, x, train=True):
        from minispp.kernels.gpu.maxpool import maxpool_forward as forward
        xp = get_array_module(x)
        y = xp.empty(self.out_shape, x.dtype)
        argmax = self.scratch("argmax", self.out_shape if train else (1, 1, 1, 1), np.int32, xp)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        forward(xp.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, y, argmax, train)
        self.save(argmax=argmax if train else None)
        return y

    def _backward_gpu(self, dy, propagate_down=True):
        from minispp.kernels.gpu.maxpool import maxpool_backward as backward
        xp = get_array_module(dy)
        dx = xp.empty(self.in_shape, dy.dtype)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        backward(xp.ascontiguousarray(dy), self.saved.argmax, kh, kw, sh, sw, ph, pw, dx)
        return dx
