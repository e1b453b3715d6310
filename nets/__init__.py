"""Network definitions (paper Table 1): ZF-5, Convnet*-5, Overfeat-5/7, with SPP or with the
no-SPP pool5, and a small net of the same shape for tests; models built from them.

    from nets import build
    model = build("zf5", num_classes=1000, spp=(6, 3, 2, 1), rng=np.random.default_rng(0))
    net = model.instance(batch=32, size=(224, 224))
"""
from .definitions import DEFINITIONS
from .model import Model, build, load, parse_size, parse_spp

__all__ = ["DEFINITIONS", "Model", "build", "load", "parse_size", "parse_spp"]
