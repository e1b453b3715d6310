"""The Layer contract (docs/design.md, "The Layer contract"), a template method after Caffe's
layer lifecycle: the public ``forward`` and ``backward`` are defined here alone, and each
layer writes only its bodies.

    out_shape = layer.setup(in_shape, params, rng)   # once: create/attach parameters
    y  = layer.forward(x, *more, train=True)          # more: labels (SoftmaxLoss), windows (WindowSPP)
    dx = layer.backward(dy, propagate_down=True)      # adds parameter gradients to params

What ``Layer.forward`` owns, in this order: the count of inputs (``n_inputs``), accepting
the first input (array type, float dtype, rank, channels that fit the parameters; a new
size re-runs ``reshape``, Caffe's Reshape), the NaN/inf scan (behind one switch,
``check_finite``), the choice of body by the array type (``_forward_cpu`` for NumPy,
``_forward_gpu`` for CuPy), and the record of what backward will need: a body stores it with
``self.save(name=value)`` under names declared in the class's ``saves``, and reads it back as
``self.saved.name``.

What ``Layer.backward`` owns: backward before forward is an error; a max-type layer
(``argmax_layer``) whose forward ran at test time kept no argmax, so its inputs were
retained and forward runs again with ``train=True`` to find the winners; the ``dy`` shape
check; the choice of body; and ``propagate_down``: when it is False (a net's first layer:
nothing needs the gradient of the input image) the body may skip computing dx, and
backward returns None.

No autograd and no graph: a net is a list of layers, and backward walks it in reverse.
"""
import contextlib
import weakref

import numpy as np

from minispp.backend import get_array_module

_FLAGS = {"check_finite": True}


def check_finite(on=None):
    """The NaN/inf scan of every layer input: on by default (tests, gradient checks, the
    data pipelines), switched off by the trainer, where the loss check stops a diverged run.
    check_finite() tells the setting; check_finite(False) sets it and returns the old one."""
    old = _FLAGS["check_finite"]
    if on is not None:
        _FLAGS["check_finite"] = bool(on)
    return old


@contextlib.contextmanager
def finite_checks(on):
    """with finite_checks(False): ... runs without the NaN scan, then restores the setting."""
    old = check_finite(on)
    try:
        yield
    finally:
        check_finite(old)


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


class NoGPUBody(TypeError):
    """A CuPy array reached a layer that has no GPU body (yet)."""


def first_nonfinite(x):
    """Index tuple and value of the first NaN/inf in x (for error messages)."""
    idx = np.argwhere(~np.isfinite(x))[0]
    return tuple(int(i) for i in idx), x[tuple(idx)]


class Saved:
    """What a forward keeps for its backward: only the names the layer declares in
    ``saves`` may be set, and each starts as None."""

    __slots__ = ("_owner", "_values")

    def __init__(self, owner, names):
        # a weak reference: a strong one would make every layer a reference cycle, freed only
        # by Python's occasional cycle collection, so a model's evicted net instances (one per
        # full-image size) would keep their arrays for a while (docs/design.md, "Memory")
        object.__setattr__(self, "_owner", weakref.ref(owner))
        object.__setattr__(self, "_values", dict.fromkeys(names))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            owner = self._owner()
            who = owner._who() if owner is not None else "layer"
            raise AttributeError(f"{who}: {name!r} is not in its declared saves "
                                 f"{tuple(self._values)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("use layer.save(name=value)")

    def clear(self):
        for k in self._values:
            self._values[k] = None


class Layer:
    """Base class: the public forward/backward, shape bookkeeping, input checks, parameters.

    A subclass sets the class attributes below, implements ``infer_shape(in_shape)``,
    ``_forward_cpu(x, *more, train)`` and ``_backward_cpu(dy, propagate_down)`` (and the
    ``_gpu`` pair when it has GPU bodies), and optionally ``create_params(in_shape, params,
    rng)`` and ``prepare(in_shape)``.
    """

    prefix = "layer"      # auto-name prefix
    rank = 4              # expected rank of the first input; None: any rank >= 2
    has_params = False
    n_inputs = 1          # arrays forward takes: x, and (SoftmaxLoss) labels or (WindowSPP) windows
    saves = ()            # what _forward_* keeps for _backward_* (self.saved.<name>)
    argmax_layer = False  # max-type: a test-mode forward keeps no argmax (see backward)
    # a test-mode forward keeps no state for backward (conv columns, LRN scales, ReLU
    # outputs): only its inputs are retained, and a backward after it runs the forward again
    # with train=True, as for the max-type layers (docs/design.md, "Memory and disk")
    lean_at_test = False

    def __init__(self, name=None):
        self.name = name
        self.in_shape = None
        self.out_shape = None
        self.params = None
        self.param_names = ()
        self.saved = Saved(self, self.saves)
        self._forward_train = None    # train flag of the last forward; None: no forward yet
        self._retained = None         # inputs of a test-mode forward (argmax or lean layer)

    # -- the public forward and backward ---------------------------------------------------
    def forward(self, x, *more, train=True):
        """The layer's output for x (and the extra inputs the layer declares)."""
        if len(more) != self.n_inputs - 1:
            raise TypeError(f"{self._who()}.forward takes {self.n_inputs} input(s), got "
                            f"{1 + len(more)}")
        x = self.accept(x)
        self.saved.clear()
        self._forward_train = None
        y = self._body("forward", x)(x, *more, train=train)
        self._forward_train = bool(train)
        recompute = self.argmax_layer or self.lean_at_test
        self._retained = (x,) + more if (recompute and not train) else None
        return y

    def backward(self, dy=None, propagate_down=True):
        """d loss / d input for dy = d loss / d output (parameter gradients are added into
        the Params store); None when propagate_down is False."""
        if self._forward_train is None:
            raise RuntimeError(f"{self._who()}: backward called before forward")
        if self._retained is not None:       # test-mode forward of a max-type or lean layer
            retained = self._retained
            self.forward(*retained, train=True)
        dy = self.check_dy(dy)
        dx = self._body("backward", dy)(dy, propagate_down)
        return dx if propagate_down else None

    def release(self):
        """Drop what the last forward kept for a backward (saved values, retained inputs);
        a backward then raises as before any forward."""
        self.saved.clear()
        self._retained = None
        self._forward_train = None

    def check_dy(self, dy):
        """dy must have the output's shape (a loss layer takes a scalar, default 1.0)."""
        if self.out_shape == ():
            return 1.0 if dy is None else float(dy)
        if dy is None or tuple(getattr(dy, "shape", ())) != tuple(self.out_shape):
            raise ValueError(f"{self._who()}: dy has shape {getattr(dy, 'shape', None)}, "
                             f"expected {self.out_shape}")
        return dy

    def _body(self, which, x):
        xp = get_array_module(x)
        return getattr(self, f"_{which}_{'cpu' if xp is np else 'gpu'}")

    def save(self, **values):
        """Keep values for backward (names from the class's ``saves``)."""
        for k, v in values.items():
            if k not in self.saves:
                raise AttributeError(f"{self._who()}: {k!r} is not in its declared saves {self.saves}")
            self.saved._values[k] = v

    # -- bodies ------------------------------------------------------------------------
    def _forward_cpu(self, x, *more, train=True):
        raise NotImplementedError(f"{type(self).__name__} must define _forward_cpu")

    def _backward_cpu(self, dy, propagate_down=True):
        raise NotImplementedError(f"{type(self).__name__} must define _backward_cpu")

    def _forward_gpu(self, x, *more, train=True):
        raise NoGPUBody(f"{self._who()}: no GPU body for a {type(x).__module__}."
                        f"{type(x).__name__} input yet; use NumPy arrays (the CPU)")

    def _backward_gpu(self, dy, propagate_down=True):
        raise NoGPUBody(f"{self._who()}: no GPU body for a {type(dy).__module__}."
                        f"{type(dy).__name__} gradient yet; use NumPy arrays (the CPU)")

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
        do not fit, or (while ``check_finite()`` is on) a NaN/inf, naming the first bad
        element. One sum of x finds out whether there is one.
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
        if _FLAGS["check_finite"] and not bool(xp.isfinite(x.sum())):
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

    def scratch(self, key, shape, dtype, xp=np):
        """A buffer this layer owns and reuses across calls (saved state, GEMM scratch), made
        with the array module xp (numpy, or the GPU module for a GPU body).

        Only state that never leaves the layer lives here: outputs and input gradients are
        fresh arrays, since callers keep them. Reusing the rest saves the page faults of
        allocating hundreds of MB per step."""
        bufs = self.__dict__.setdefault("_scratch", {})
        buf = bufs.get(key)
        if (buf is None or buf.shape != tuple(shape) or buf.dtype != dtype
                or (xp is not np and not isinstance(buf, xp.ndarray))
                or (xp is np and type(buf) is not np.ndarray)):
            buf = xp.empty(shape, dtype)
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

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, in={self.in_shape}, out={self.out_shape})"
