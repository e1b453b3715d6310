"""Layer specs: a network definition is a short, size-agnostic list of them that reads like
Table 1 of the paper (the way cuda-convnet's layer definition files read). A spec is a layer
class and that class's own keyword arguments, ``Spec("conv1", Conv, out_channels=96,
kernel=7, stride=2, pad=1)``: no second vocabulary, and every default (the init std, the
LRN constants) is the layer class's one. Each fixed-size instance of a model makes its
own layers from the same specs (``spec.make()``), attached to the one Params store.

The arguments are checked against the class's signature when the spec is written, so a
misspelt argument fails at import of the definition, not when a net is built.
"""
import inspect

from layers import FC, SPP, Dropout, ReLU


class Spec:
    """name: the layer's name (its parameters are "<name>.W", "<name>.b"). layer: the class.
    kwargs: the class's keyword arguments, except name."""

    __slots__ = ("name", "layer", "kwargs")

    def __init__(self, name, layer, **kwargs):
        try:
            inspect.signature(layer).bind(name=name, **kwargs)
        except TypeError as err:
            raise TypeError(f"layer spec {name!r}: {layer.__name__}{err}") from None
        self.name, self.layer, self.kwargs = name, layer, dict(kwargs)

    def make(self):
        """A fresh layer object (no parameters until its setup)."""
        return self.layer(name=self.name, **self.kwargs)

    def is_a(self, *classes):
        return issubclass(self.layer, classes)

    def __eq__(self, other):
        return isinstance(other, Spec) and (self.name, self.layer, self.kwargs) == \
            (other.name, other.layer, other.kwargs)

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}: {self.layer.__name__}({inner})"


def head(pool5, num_classes):
    """pool5 (a 6x6 max pool, or the SPP layer), then fc6 4096, fc7 4096 with dropout, fc8.

    Init (Caffe's AlexNet/ZF models): fc6/fc7 std 0.005 with bias 0.1, fc8 std 0.01."""
    return [
        pool5,
        Spec("fc6", FC, out_features=4096, std=0.005, bias=0.1), Spec("relu6", ReLU),
        Spec("drop6", Dropout),
        Spec("fc7", FC, out_features=4096, std=0.005, bias=0.1), Spec("relu7", ReLU),
        Spec("drop7", Dropout),
        Spec("fc8", FC, out_features=num_classes, std=0.01),
    ]


def pool5_or_spp(spp_levels, form, no_spp_pool):
    """The SPP layer for a pyramid, or the no-SPP baseline's pooling (6x6 output)."""
    if spp_levels is None:
        return no_spp_pool
    return Spec("spp5", SPP, levels=tuple(spp_levels), form=form)

