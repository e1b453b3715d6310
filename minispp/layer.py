"""The Layer contract (DESIGN.md, "Layer"), after Caffe's layer lifecycle.

    out_shape = layer.setup(in_shape, params, rng)   # once: create/attach parameters
    y  = layer.forward(x, train)                       # keeps what backward needs
    dx = layer.backward(dy)                            # adds parameter gradients to params

``setup`` creates the layer's parameters in the shared ``Params`` store (or attaches to them
when they already exist: another instance of the same model) and precomputes everything that
depends on the input size (``reshape``). ``forward`` on an input of another size re-runs
``reshape`` (Caffe's Reshape), so a parameter-free layer may also be used without ``setup``.
No autograd and no graph: a net is a list of layers, and backward walks it in reverse.
"""
import numpy as np

from .backend import get_array_module


def as_pair(v, what):
    """(a, b) from an int or a pair of ints, both >= 0."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair, got {v!r}")
        a, b = v
    else:
        a = b = v
    if int(a) != a or int(b) != b or a < 0 or b < 0:
        raise ValueError(f"{what} must be non-negative integers, got {v!r}")
    return int(a), int(b)


class NonFiniteError(ValueError, FloatingPointError):
    """A NaN or inf reached a layer: bad input data (a ValueError) or a diverged training
    run (a FloatingPointError, which the trainer stops on)."""


def first_nonfinite(x):
    """Index tuple and value of the first NaN/inf in x (for error messages)."""
    idx = np.argwhere(~np.isfinite(x))[0]
    return tuple(int(i) for i in idx), x[tuple(idx)]


class Layer:
    """Base class: shape bookkeeping, input validation, parameter access.

    Subclasses set ``rank`` (4 for NCHW maps, None for any rank >= 2), implement
    ``infer_shape(in_shape)``, ``forward`` and ``backward``, and optionally
    ``create_params(in_shape, params, rng)`` and ``prepare(in_shape)``.
    """

    prefix = "layer"     # auto-name prefix
    rank = 4             # expected input rank; None: any rank >= 2
    has_params = False

    def __init__(self, name=None):
        self.name = name
        self.in_shape = None
        self.out_shape = None
        self.params = None
        self.param_names = ()

    # -- lifecycle ---------------------------------------------------------------------
    def setup(self, in_shape, params=None, rng=None):
        """Create or attach parameters, fix shapes for ``in_shape``; return the output shape."""
        in_shape = self._as_shape(in_shape)
        if self.has_params and params is None:
            raise ValueError(f"{type(self).__name__} {self.name or ''} has parameters: "
                             f"setup needs a Params store")
        if self.name is None:
            self.name = params.unique_name(self.prefix) if params is not None else self.prefix
        self.params = params
        if self.has_params:
            if rng is None:
                rng = np.random.default_rng(0)
            self.create_params(in_shape, params, rng)
        self.reshape(in_shape)
        return self.out_shape

    def reshape(self, in_shape):
        """Precompute everything that depends on the input size."""
        self.in_shape = self._as_shape(in_shape)
        self.out_shape = tuple(int(s) for s in self.infer_shape(self.in_shape))
        self.prepare(self.in_shape)
        return self.out_shape

    def create_params(self, in_shape, params, rng):
        pass

    def prepare(self, in_shape):
        pass

    def infer_shape(self, in_shape):
        raise NotImplementedError(f"{type(self).__name__} must define infer_shape")

    # -- helpers for subclasses ----------------------------------------------------------
    def _as_shape(self, shape):
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise ValueError(f"{self._who()}: shape must be a tuple of ints, got {shape!r}") from None
        if self.rank is not None and len(shape) != self.rank:
            raise ValueError(f"{self._who()}: expected a rank-{self.rank} input (N, C, H, W), "
                             f"got shape {shape}")
        if self.rank is None and len(shape) < 2:
            raise ValueError(f"{self._who()}: expected an input of rank >= 2 (N, ...), got "
                             f"shape {shape}")
        if any(s < 1 for s in shape):
            raise ValueError(f"{self._who()}: every dimension must be >= 1, got shape {shape}")
        return shape

    def _who(self):
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    def accept(self, x):
        """Validate an input array and reshape the layer when its size changed.

        Raises ValueError for a non-float dtype, a wrong rank, a channel count the parameters
        do not fit, or a NaN/inf (naming the first bad element).
        """
        xp = get_array_module(x)
        if not isinstance(x, xp.ndarray):
            raise ValueError(f"{self._who()}: expected an array, got {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            raise ValueError(f"{self._who()}: expected float32 or float64 input, got {x.dtype}")
        if self.rank is not None and x.ndim != self.rank:
            raise ValueError(f"{self._who()}: expected a rank-{self.rank} input, got shape "
                             f"{x.shape}")
        if self.in_shape is None:
            if self.has_params:
                raise ValueError(f"{self._who()}: call setup(in_shape, params) before forward")
            self.setup(x.shape)
        elif x.shape != self.in_shape:
            self.check_compatible(x.shape)
            self.reshape(x.shape)
        if not bool(xp.isfinite(x.sum())):
            idx, val = first_nonfinite(x)
            raise NonFiniteError(f"{self._who()}: input has a non-finite value {val} at index {idx}")
        return x

    def check_compatible(self, shape):
        """Raise when a new input shape does not fit the parameters (channel count)."""
        if self.rank is not None and len(shape) != self.rank:
            raise ValueError(f"{self._who()}: expected a rank-{self.rank} input, got shape {shape}")
        if self.has_params and shape[1] != self.in_shape[1]:
            raise ValueError(f"{self._who()}: input has {shape[1]} channels, the layer was set "
                             f"up for {self.in_shape[1]}")

    def scratch(self, key, shape, dtype):
        """A buffer this layer owns and reuses across calls (saved state, GEMM scratch).

        Only state that never leaves the layer lives here: outputs and input gradients are
        fresh arrays, since callers keep them. Reusing the rest saves the page faults of
        allocating hundreds of MB per step."""
        bufs = self.__dict__.setdefault("_scratch", {})
        buf = bufs.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = np.empty(shape, dtype)
            bufs[key] = buf
        return buf

    def macs(self):
        """Multiply-accumulates per image (conv and fc layers; 0 for the others)."""
        return 0

    def param_count(self):
        """Scalars in this layer's parameters."""
        return sum(self.params[n].value.size for n in self.param_names)

    def param(self, suffix):
        return self.params[f"{self.name}.{suffix}"]

    def value_as(self, suffix, dtype):
        """A parameter's value in the compute dtype (a cast copy only when they differ)."""
        v = self.param(suffix).value
        return v if v.dtype == dtype else v.astype(dtype)

    def add_grad(self, suffix, g):
        p = self.param(suffix)
        p.grad += g if g.dtype == p.grad.dtype else g.astype(p.grad.dtype)

    def require_forward(self, what):
        if getattr(self, what, None) is None:
            raise RuntimeError(f"{self._who()}: backward called before forward")

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, in={self.in_shape}, out={self.out_shape})"
