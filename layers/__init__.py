"""One file per layer, each with a hand-written forward and backward (the Layer contract of
minispp.layer). Import them from here: ``from layers import Conv, SPP``."""
from .conv import Conv
from .dropout import Dropout
from .fc import FC
from .lrn import LRN
from .pool import MaxPool
from .relu import ReLU
from .softmax_loss import SoftmaxLoss
from .spp import SPP
from .window_spp import WindowSPP

__all__ = ["Conv", "MaxPool", "LRN", "ReLU", "FC", "Dropout", "SPP", "WindowSPP", "SoftmaxLoss"]
