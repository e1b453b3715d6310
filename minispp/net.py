"""A net: a list of layers run in order, with a loss layer on top (DESIGN.md, "Net").

No graph and no autograd: forward walks the list, backward walks it in reverse, each layer
using what its own forward kept. A Net is set up at one fixed input size (like
cuda-convnet's fixed-size networks); nets of other sizes are other Net objects attached to
the same Params store (see nets.Model).
"""
import math
import time


class Net:
    """layers: Layer objects in order. loss: a loss layer (forward(scores, labels) -> float,
    backward(dloss) -> dscores), e.g. layers.SoftmaxLoss(); None for a feature extractor."""

    def __init__(self, layers, loss=None, name="net"):
        self.layers = list(layers)
        self.loss_layer = loss
        self.name = name
        self.in_shape = None
        self.out_shape = None
        self.params = None

    def setup(self, in_shape, params, rng=None):
        """Set up every layer for ``in_shape`` in turn; return the net's output shape.

        A layer that cannot take its input (a map smaller than a kernel, a no-SPP pool5 that
        does not give 6x6) raises ValueError naming the layer and the input size of the net.
        """
        shape = tuple(int(s) for s in in_shape)
        self.in_shape = shape
        self.params = params
        for layer in self.layers:
            try:
                shape = layer.setup(shape, params, rng)
            except ValueError as err:
                raise ValueError(f"net {self.name!r} with input {self.in_shape}: {err}") from None
        self.out_shape = shape
        return shape

    def forward(self, x, train=False):
        """x: (N, C, H, W) of the set-up size -> the last layer's output, e.g. scores (N, K).
        The batch size may differ from the set-up one (the last, smaller batch of an epoch)."""
        if tuple(x.shape[1:]) != self.in_shape[1:]:
            raise ValueError(f"net {self.name!r} is set up for input {self.in_shape}, got "
                             f"{tuple(x.shape)}; make an instance of that size")
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
        """Backward from the loss through every layer; returns d loss / d input. Parameter
        gradients are added into the Params store."""
        d = self.loss_layer.backward(dloss)
        return self.backward_from(d)

    def backward_from(self, dy):
        """Backward from a gradient of the last layer's output (no loss layer)."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def param_names(self):
        return [n for layer in self.layers for n in layer.param_names]

    def summary(self):
        """One dict per layer: name, type, out_shape, params (scalars), macs (per image)."""
        return [{"name": layer.name, "type": type(layer).__name__, "out_shape": layer.out_shape,
                 "params": layer.param_count() if layer.params is not None else 0,
                 "macs": layer.macs()} for layer in self.layers]

    def summary_table(self):
        """The summary as text, with totals."""
        rows = self.summary()
        lines = [f"{self.name}: input {self.in_shape}",
                 f"  {'layer':<10} {'type':<10} {'output':<22} {'params':>12} {'MACs/image':>15}"]
        for r in rows:
            lines.append(f"  {r['name']:<10} {r['type']:<10} {str(r['out_shape']):<22} "
                         f"{r['params']:>12,} {r['macs']:>15,}")
        p = sum(r["params"] for r in rows)
        m = sum(r["macs"] for r in rows)
        lines.append(f"  {'total':<10} {'':<10} {'':<22} {p:>12,} {m:>15,}")
        lines.append(f"  = {p / 1e6:.2f} M parameters, {m / 1e9:.3f} G multiply-accumulates per image")
        return "\n".join(lines)

    def profile(self, x, labels=None, train=True):
        """Seconds spent per layer: [(name, forward_s, backward_s)], one forward (and backward
        when labels are given) of x. For finding where the time goes, not for tests."""
        times = []
        h = x
        for layer in self.layers:
            t0 = time.perf_counter()
            h = layer.forward(h, train=train)
            times.append([layer.name, time.perf_counter() - t0, 0.0])
        if labels is not None:
            self.loss_layer.forward(h, labels)
            d = self.loss_layer.backward()
            for entry, layer in zip(reversed(times), reversed(self.layers)):
                t0 = time.perf_counter()
                d = layer.backward(d)
                entry[2] = time.perf_counter() - t0
        return [tuple(t) for t in times]
