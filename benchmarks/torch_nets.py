"""The same network in PyTorch, built from a minispp model's specs and weights: the
independent reference for tests/test_torch_reference.py and benchmarks/bench_nets.py.
PyTorch is optional and never a dependency of minispp."""
import torch
from torch import nn
from torch.nn import functional as F

from layers import FC, LRN, SPP, Conv, Dropout, MaxPool, ReLU


class TorchSPP(nn.Module):
    """Spatial pyramid pooling with adaptive_max_pool2d (its bins are the Appendix's)."""

    def __init__(self, levels):
        super().__init__()
        self.levels = levels

    def forward(self, x):
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels], 1)


def torch_net(model, upto=None):
    """nn.Sequential equal to model's layers (the first `upto` specs), with its weights."""
    mods, channels, flat = [], 3, None
    dtype = torch.float64 if model.params.dtype == "float64" else torch.float32
    for spec in model.specs[:upto]:
        layer = spec.make()              # the layer's own normalized arguments
        if spec.is_a(Conv):
            m = nn.Conv2d(channels, layer.out_channels, layer.kernel, layer.stride, layer.pad,
                          dtype=dtype)
            channels = layer.out_channels
        elif spec.is_a(ReLU):
            m = nn.ReLU()
        elif spec.is_a(LRN):
            m = nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        elif spec.is_a(MaxPool):
            m = nn.MaxPool2d(layer.kernel, layer.stride, layer.pad, ceil_mode=layer.ceil_mode)
        elif spec.is_a(SPP):
            m = TorchSPP(layer.levels)
        elif spec.is_a(Dropout):
            m = nn.Dropout(layer.ratio)
        elif spec.is_a(FC):
            w = model.params[f"{spec.name}.W"].value
            if flat is None:
                mods.append(nn.Flatten())
                flat = True
            m = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
        else:
            raise ValueError(f"no PyTorch counterpart for {spec!r}")
        if spec.is_a(Conv, FC):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(model.params[f"{spec.name}.W"].value))
                m.bias.copy_(torch.from_numpy(model.params[f"{spec.name}.b"].value))
        mods.append(m)
    return nn.Sequential(*mods)
