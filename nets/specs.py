"""Layer specs: a network definition is a short, size-agnostic list of these, read like
Table 1 of the paper (the way cuda-convnet's layer .cfg files read). ``make_layer`` turns a
spec into a layer object; each fixed-size instance of a model makes its own layers from the
same specs, attached to the one Params store.

Init and solver multipliers live with the specs: conv/fc weights are Gaussian with the
spec's std, biases constant; weights learn at 1x the base rate with weight decay, biases at
2x without decay (the Caffe convention of the paper's lineage).
"""
from dataclasses import dataclass, field

from layers import FC, LRN, SPP, Conv, Dropout, MaxPool, ReLU


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str            # conv, relu, lrn, pool, spp, fc, dropout
    args: dict = field(default_factory=dict)

    def __repr__(self):
        inner = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.name}: {self.kind}({inner})"


def conv(name, filters, size, stride=1, pad=0, std=None, bias=0.0, lr_mult=(1.0, 2.0),
         decay_mult=(1.0, 0.0)):
    return Spec(name, "conv", dict(filters=filters, size=size, stride=stride, pad=pad, std=std,
                                   bias=bias, lr_mult=lr_mult, decay_mult=decay_mult))


def relu(name):
    return Spec(name, "relu")


def lrn(name, size=5, alpha=1e-4, beta=0.75, k=1.0):
    return Spec(name, "lrn", dict(size=size, alpha=alpha, beta=beta, k=k))


def pool(name, size, stride, pad=0, ceil=True):
    return Spec(name, "pool", dict(size=size, stride=stride, pad=pad, ceil=ceil))


def spp(name, levels, form="appendix"):
    return Spec(name, "spp", dict(levels=tuple(levels), form=form))


def fc(name, outputs, std=None, bias=0.0, lr_mult=(1.0, 2.0), decay_mult=(1.0, 0.0)):
    return Spec(name, "fc", dict(outputs=outputs, std=std, bias=bias, lr_mult=lr_mult,
                                 decay_mult=decay_mult))


def dropout(name, ratio=0.5):
    return Spec(name, "dropout", dict(ratio=ratio))


def make_layer(spec):
    """A fresh layer object for one spec."""
    a = spec.args
    if spec.kind == "conv":
        return Conv(a["filters"], a["size"], a["stride"], a["pad"], name=spec.name, std=a["std"],
                    bias=a["bias"], lr_mult=a["lr_mult"], decay_mult=a["decay_mult"])
    if spec.kind == "relu":
        return ReLU(name=spec.name)
    if spec.kind == "lrn":
        return LRN(a["size"], a["alpha"], a["beta"], a["k"], name=spec.name)
    if spec.kind == "pool":
        return MaxPool(a["size"], a["stride"], a["pad"], ceil_mode=a["ceil"], name=spec.name)
    if spec.kind == "spp":
        return SPP(a["levels"], form=a["form"], name=spec.name)
    if spec.kind == "fc":
        return FC(a["outputs"], name=spec.name, std=a["std"], bias=a["bias"], lr_mult=a["lr_mult"],
                  decay_mult=a["decay_mult"])
    if spec.kind == "dropout":
        return Dropout(a["ratio"], name=spec.name)
    raise ValueError(f"layer spec {spec.name!r} has unknown kind {spec.kind!r}")


def head(pool5, num_classes):
    """pool5 (a 6x6 max pool, or the SPP layer), then fc6 4096, fc7 4096 with dropout, fc8.

    Init (Caffe's AlexNet/ZF models): fc6/fc7 std 0.005 with bias 0.1, fc8 std 0.01."""
    return [
        pool5,
        fc("fc6", 4096, std=0.005, bias=0.1), relu("relu6"), dropout("drop6"),
        fc("fc7", 4096, std=0.005, bias=0.1), relu("relu7"), dropout("drop7"),
        fc("fc8", num_classes, std=0.01),
    ]


def pool5_or_spp(spp_levels, form, no_spp_pool):
    """The SPP layer for a pyramid, or the no-SPP baseline's pooling (6x6 output)."""
    if spp_levels is None:
        return no_spp_pool
    return spp("spp5", spp_levels, form)
