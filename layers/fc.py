"""Fully connected layer (fc6, fc7, fc8 of the paper's nets)."""
import numpy as np

from minispp.layer import Layer


class FC(Layer):
    """y = x2 @ W.T + b with x2 = x.reshape(N, D) (an NCHW map or SPP vector is flattened).

    out_features: M. W: (M, D), b: (M,) as "<name>.W", "<name>.b". std: Gaussian init std,
    or None for sqrt(2 / D) (He et al. 2015); bias: initial bias value.
    Backward: dW = dy.T @ x2, db = sum of dy over the batch, dx = (dy @ W) in x's shape.
    One body for both devices: the products are the array module's (BLAS on the CPU, cuBLAS
    through CuPy on the GPU).
    """

    prefix = "fc"
    rank = None
    has_params = True
    saves = ("x2",)

    def __init__(self, out_features, name=None, std=None, bias=0.0, lr_mult=(1.0, 2.0),
                 decay_mult=(1.0, 0.0)):
        super().__init__(name)
        if int(out_features) != out_features or out_features < 1:
            raise ValueError(f"out_features must be a positive integer, got {out_features!r}")
        self.out_features = int(out_features)
        self.std, self.bias_value = (None if std is None else float(std)), float(bias)
        self.lr_mult, self.decay_mult = lr_mult, decay_mult

    def create_params(self, in_shape, params, rng):
        D = int(np.prod(in_shape[1:]))
        std = self.std if self.std is not None else np.sqrt(2.0 / D)
        params.get_or_create(f"{self.name}.W", (self.out_features, D),
                             lambda s: rng.normal(0.0, std, s), self.lr_mult[0], self.decay_mult[0])
        params.get_or_create(f"{self.name}.b", (self.out_features,),
                             lambda s: np.full(s, self.bias_value), self.lr_mult[1], self.decay_mult[1])
        self.param_names = (f"{self.name}.W", f"{self.name}.b")

    def infer_shape(self, in_shape):
        return (in_shape[0], self.out_features)

    def macs(self):
        """Multiply-accumulates per image: M D."""
        return self.out_features * int(np.prod(self.in_shape[1:]))

    def check_compatible(self, shape):
        if int(np.prod(shape[1:])) != int(np.prod(self.in_shape[1:])):
            raise ValueError(f"{self._who()}: input {shape} has {int(np.prod(shape[1:]))} features "
                             f"per row, the layer was set up for {int(np.prod(self.in_shape[1:]))}")

    def _forward_cpu(self, x, train=True):
        x2 = x.reshape(x.shape[0], -1)
        y = x2 @ self.value_as("W", x.dtype).T
        y += self.value_as("b", x.dtype)
        self.save(x2=x2)
        return y

    def _backward_cpu(self, dy, propagate_down=True):
        x2 = self.saved.x2
        dy = dy.astype(x2.dtype, copy=False)
        self.add_grad("W", dy.T @ x2)
        self.add_grad("b", dy.sum(axis=0))
        if not propagate_down:
            return None
        return (dy @ self.value_as("W", dy.dtype)).reshape(self.in_shape)

    _forward_gpu = _forward_cpu
    _backward_gpu = _backward_cpu
