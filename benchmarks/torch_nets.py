"""The same network in PyTorch, built from a minispp model's specs and weights: the
independent reference for tests/test_torch_reference.py and benchmarks/bench_nets.py.
PyTorch is optional and never a dependency of minispp."""
import torch
from torch import nn
from torch.nn import functional as F


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
        a = spec.args
        if spec.kind == "conv":
            m = nn.Conv2d(channels, a["filters"], a["size"], a["stride"], a["pad"], dtype=dtype)
            channels = a["filters"]
        elif spec.kind == "relu":
            m = nn.ReLU()
        elif spec.kind == "lrn":
            m = nn.LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"])
        elif spec.kind == "pool":
            m = nn.MaxPool2d(a["size"], a["stride"], a["pad"], ceil_mode=a["ceil"])
        elif spec.kind == "spp":
            m = TorchSPP(a["levels"])
        elif spec.kind == "dropout":
            m = nn.Dropout(a["ratio"])
        elif spec.kind == "fc":
            w = model.params[f"{spec.name}.W"].value
            if flat is None:
                mods.append(nn.Flatten())
                flat = True
            m = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
        else:
            raise ValueError(spec.kind)
        if spec.kind in ("conv", "fc"):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(model.params[f"{spec.name}.W"].value))
                m.bias.copy_(torch.from_numpy(model.params[f"{spec.name}.b"].value))
        mods.append(m)
    return nn.Sequential(*mods)
