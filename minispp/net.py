"""A net: a list of layers run in order, with a loss layer on top (docs/design.md, "Net and Model").

No graph and no autograd: forward walks the list, backward walks it in reverse, each layer
using what its own forward kept. A Net is set up at one fixed input size (like
cuda-convnet's fixed-size networks); nets of other sizes are other Net objects attached to
the same Params store (see nets.Model).

The device boundary: a net runs where its parameters are (``params.device``). Fed a host
(NumPy) array while its parameters are on the GPU, it copies the input to the device, runs
every layer's GPU body there, and hands back host arrays (the output; the input gradient);
fed device arrays, it keeps everything on the device. So the pipelines, which read images
and write results on the host, run on either device unchanged.
"""
import math
import time

import numpy as np

from minispp.backend import get_array_module, module_of, to_numpy


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
        self._host_io = False       # the last forward came from the host onto the device

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

    def forward(self, x, train=False, start=None, until=None):
        """x: (N, C, H, W) of the set-up size -> the last layer's output, e.g. scores (N, K).
        The batch size may differ from the set-up one (the last, smaller batch of an epoch).

        start: the name of the first layer to run (x is then that layer's input, e.g. pooled
        conv5 features for "fc6"); until: the name of the last layer to run (its output is
        returned, e.g. "relu5" for conv5 maps): Caffe's ForwardFromTo."""
        h = x
        for layer, h in self._walk(x, train, start, until):
            pass
        return self._out(h)

    def release(self):
        """Drop what every layer kept from the last forward for a backward. A test-time
        forward keeps each max-type and lean layer's input (docs/design.md, "Memory and
        disk"): about 200 MB for ZF-5's trunk on a 688 x 917 image, 600 MB at s = 1200, and
        a model caches several instances, so code that wants only the outputs (conv5 maps of
        full images) releases the net after each forward."""
        for layer in self.layers:
            layer.release()
        if self.loss_layer is not None:
            self.loss_layer.release()

    def outputs(self, x, names, train=False, start=None):
        """{name: output} of the named layers for one forward of x, which stops at the
        deepest of them (the features stage reads spp5, fc6 and relu7 in one pass)."""
        wanted = set(names)
        unknown = wanted - {layer.name for layer in self.layers}
        if unknown:
            raise ValueError(f"net {self.name!r} has no layer {sorted(unknown)}; its layers are "
                             f"{[layer.name for layer in self.layers]}")
        last = max(self.index(n) for n in wanted)
        return {layer.name: self._out(h) for layer, h in
                self._walk(x, train, start, self.layers[last].name) if layer.name in wanted}

    def index(self, name):
        """Position of the layer called name."""
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise ValueError(f"net {self.name!r} has no layer {name!r}; its layers are "
                         f"{[layer.name for layer in self.layers]}")

    def _walk(self, x, train, start, until):
        """(layer, its output) for the layers from start through until, in order."""
        first = 0 if start is None else self.index(start)
        last = len(self.layers) - 1 if until is None else self.index(until)
        if first > last:
            raise ValueError(f"net {self.name!r}: layer {start!r} comes after {until!r}")
        if first == 0 and tuple(x.shape[1:]) != self.in_shape[1:]:
            raise ValueError(f"net {self.name!r} is set up for input {self.in_shape}, got "
                             f"{tuple(x.shape)}; make an instance of that size")
        h = self._in(x)
        for layer in self.layers[first:last + 1]:
            h = layer.forward(h, train=train)
            yield layer, h

    def _in(self, x):
        """x on the parameters' device (a copy of a host input for a GPU net)."""
        device = self.params.device if self.params is not None else "cpu"
        self._host_io = device != "cpu" and get_array_module(x) is np
        return module_of(device).asarray(x) if self._host_io else x

    def _out(self, h):
        """h as the caller gave the input: on the host when it came from the host."""
        return to_numpy(h) if self._host_io else h

    def loss(self, x, labels, train=True):
        """Forward through the layers and the loss layer; return the loss (a float).

        A NaN or infinite loss raises FloatingPointError: nothing downstream is valid."""
        if self.loss_layer is None:
            raise ValueError(f"net {self.name!r} has no loss layer")
        h = x
        for layer, h in self._walk(x, train, None, None):      # the scores stay on the device
            pass
        value = self.loss_layer.forward(h, labels)
        if not math.isfinite(value):
            raise FloatingPointError(f"net {self.name!r}: loss is {value}")
        return value

    def backward(self, dloss=1.0, input_grad=False):
        """Backward from the loss through every layer. Parameter gradients are added into
        the Params store. The gradient of the input (the image) is computed only when
        input_grad is True (a gradient check): otherwise the first layer is told not to
        propagate down (conv1 skips its dcol GEMM and col2im), and None is returned."""
        d = self.loss_layer.backward(dloss)
        return self.backward_from(d, input_grad)

    def backward_from(self, dy, input_grad=False):
        """Backward from a gradient of the last layer's output (no loss layer)."""
        last = len(self.layers) - 1
        if self._host_io and get_array_module(dy) is np and np.ndim(dy):
            dy = module_of(self.params.device).asarray(dy)
        for i in range(last, -1, -1):
            dy = self.layers[i].backward(dy, propagate_down=input_grad or i > 0)
        return self._out(dy) if dy is not None else None

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
