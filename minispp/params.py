"""The parameter store shared by every instance of a model (docs/design.md, "Params").

One ``Params`` holds, for each name such as ``"conv2.W"``, one ``Param``: its value, its
gradient and its solver state. Net instances built for different input sizes (the 224 net and
the 180 net of multi-size training, Sec. 2.3) attach to the same entries, so they are the same
parameters, as cuda-convnet's fixed-size networks were.

Gradients *accumulate*: every backward adds into ``grad``; ``zero_grad()`` clears them (the
solver does, once per step). That is what lets two instances contribute to one step.

A store lives on one device (``params.device``, "cpu" or "gpu"): ``params.to("gpu")`` moves
every value, gradient and solver buffer there in place of the old ones, so the layers that
read ``params[name].value`` follow; parameters created later are created there.
"""
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .backend import check_device, get_array_module, to_device


class Param:
    """One learnable array: value, grad (same shape and dtype), per-parameter multipliers."""

    def __init__(self, name, value, lr_mult=1.0, decay_mult=1.0):
        self.name = name
        self.value = value
        self.grad = np.zeros_like(value)
        self.lr_mult = float(lr_mult)
        self.decay_mult = float(decay_mult)
        self.state = {}  # solver state, e.g. "momentum"

    @property
    def shape(self):
        return self.value.shape

    def to(self, device):
        """Move value, grad and solver state to device ("cpu" or "gpu")."""
        self.value = to_device(self.value, device)
        self.grad = to_device(self.grad, device)
        self.state = {k: to_device(v, device) for k, v in self.state.items()}
        return self

    def __repr__(self):
        return f"Param({self.name!r}, shape={self.value.shape}, dtype={self.value.dtype})"


class Params(Mapping):
    """A mapping of names to Param, in creation order: ``params["conv2.W"].value``;
    iteration yields the names, ``.values()`` the Params, ``.items()`` both.

    dtype: the dtype of newly created parameters (float32 for training, float64 for gradient
    checks).
    """

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Params dtype must be float32 or float64, got {self.dtype}")
        self._items = OrderedDict()
        self._counts = {}
        self.device = "cpu"

    def to(self, device):
        """Move every parameter to device ("cpu" or "gpu"; GPUUnavailable, one line, where
        CuPy or a GPU is missing); returns self."""
        check_device(device)
        for p in self._items.values():
            p.to(device)
        self.device = device
        return self

    def get_or_create(self, name, shape, init, lr_mult=1.0, decay_mult=1.0):
        """The Param ``name``; created with ``init(shape) -> array`` if it does not exist.

        An existing Param of another shape is an error: two layers may share a name only when
        they are the same parameter.
        """
        shape = tuple(int(s) for s in shape)
        if name in self._items:
            p = self._items[name]
            if p.value.shape != shape:
                raise ValueError(f"parameter {name!r} exists with shape {p.value.shape}, "
                                 f"a layer asked for {shape}")
            return p
        value = np.ascontiguousarray(init(shape), dtype=self.dtype)
        if value.shape != shape:
            raise ValueError(f"initializer for {name!r} returned shape {value.shape}, "
                             f"expected {shape}")
        p = Param(name, value, lr_mult, decay_mult)
        if self.device != "cpu":
            p.to(self.device)
        self._items[name] = p
        return p

    def unique_name(self, prefix):
        """A fresh name such as "conv3" for layers built without one."""
        while True:
            self._counts[prefix] = self._counts.get(prefix, 0) + 1
            name = f"{prefix}{self._counts[prefix]}"
            if not any(k.startswith(name + ".") for k in self._items):
                return name

    def release_training_state(self):
        """Drop the gradients and solver state (a trained model that only runs forward from
        now on): each gradient becomes a fresh zero array, which takes no memory until a
        backward writes it, and the solver's buffers (momentum) go."""
        for p in self._items.values():
            p.grad = get_array_module(p.value).zeros_like(p.value)
            p.state = {}

    def zero_grad(self):
        for p in self._items.values():
            p.grad[...] = 0

    def __getitem__(self, name):
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"no parameter {name!r}; have {list(self._items)}") from None

    def __contains__(self, name):
        return name in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def count(self):
        """Total number of scalar parameters."""
        return int(sum(p.value.size for p in self._items.values()))

    def __repr__(self):
        return f"Params({len(self)} arrays, {self.count():,} values, {self.dtype})"
