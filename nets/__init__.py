"""Network definitions: the paper's ZF-5, Convnet*-5 and Overfeat-5/7 (with and without SPP)
and small nets of the same shape for fast tests."""
from .small import small_spp_net

__all__ = ["small_spp_net"]
