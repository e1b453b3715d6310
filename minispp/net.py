"""A net: a list of layers run in order, with a loss layer on top (DESIGN.md, "Net").

No graph and no autograd: forward walks the list, backward walks it in reverse, each layer
using what its own forward kept. Instantiated at one fixed input size by ``setup``.
"""
import math


class Net:
    """layers: Layer objects in order. loss: a loss layer (forward(scores, labels) -> float,
    backward(dloss) -> dscores), e.g. layers.SoftmaxLoss(); None for a feature extractor."""

    def __init__(self, layers, loss=None, name="net"):
        self.layers = list(layers)
        self.loss_layer = loss
        self.name = name
        self.in_shape = None
        self.out_shape = None

    def setup(self, in_shape, params, rng=None):
        """Set up every layer for ``in_shape`` in turn; return the net's output shape."""
        shape = tuple(int(s) for s in in_shape)
        self.in_shape = shape
        for layer in self.layers:
            shape = layer.setup(shape, params, rng)
        self.out_shape = shape
        return shape

    def forward(self, x, train=False):
        """x: (N, C, H, W) -> the last layer's output, e.g. scores (N, K)."""
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x

    def loss(self, x, labels, train=True):
        """Forward through the layers and the loss layer; return the loss (a float).

        A NaN or infinite loss raises FloatingPointError: nothing downstream is valid."""
        if self.loss_layer is None:
            raise ValueError(f"net {self.name!r} has no loss layer")
        value = self.loss_layer.forward(self.forward(x, train=train), labels)
        if not math.isfinite(value):
            raise FloatingPointError(f"net {self.name!r}: loss is {value}")
        return value

    def backward(self, dloss=1.0):
        """Backward from the loss through every layer; returns d loss / d input."""
        d = self.loss_layer.backward(dloss)
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return d

    def param_names(self):
        return [n for layer in self.layers for n in layer.param_names]
