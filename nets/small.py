"""A small net with every layer kind of the paper's nets, for tests and gradient checks."""

from layers import FC, LRN, SPP, Conv, Dropout, MaxPool, ReLU, SoftmaxLoss
from minispp import Net


def small_spp_net(num_classes=4, channels=(4, 5), fc=8, levels=(3, 2, 1), dropout=0.5,
                  std=0.5, name="small"):
    """conv1-relu-lrn-pool-conv2-relu-spp-fc6-relu-dropout-fc8 + softmax loss.

    The shape of ZF-5 in miniature: 3x3 stride-2 conv1 with LRN and an overlapping 3x3/2 ceil
    pool, a padded conv2, an SPP layer, one hidden fc layer with dropout. Not set up: call
    ``net.setup((N, 3, H, W), params, rng)``.
    """
    return Net([
        Conv(channels[0], 3, stride=2, pad=1, name="conv1", std=std, bias=0.1), ReLU(),
        LRN(3, alpha=1.0, beta=0.75, k=2.0),
        MaxPool(3, 2, ceil_mode=True),
        Conv(channels[1], 3, stride=1, pad=1, name="conv2", std=std, bias=0.1), ReLU(),
        SPP(levels),
        FC(fc, name="fc6", std=0.3, bias=0.5), ReLU(),
        Dropout(dropout),
        FC(num_classes, name="fc8", std=0.3),
    ], loss=SoftmaxLoss(), name=name)
