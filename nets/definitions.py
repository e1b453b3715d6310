"""The paper's networks (Sec. 3.1.1, Table 1) and a small net of the same shape for tests.

Init: conv weights Gaussian with He et al.'s per-layer std sqrt(2 / fan_in) (Conv's default:
the authors' own init for ReLU nets, 2015); fc6 and fc7 std 0.005 and fc8 std 0.01 (Caffe's
AlexNet/ZF models); biases 0, or 0.1 for conv2/4/5, fc6 and fc7 as in Caffe's AlexNet. The
inputs are normalized to unit scale (train.classify.views), which this init assumes.

Paddings are chosen, as the paper says, "to produce the expected output feature map size"
at 224 x 224; map sizes below are for that input. Pooling rounds up (ceil mode, as Caffe
and cuda-convnet did) unless noted. ReLU follows every conv and fc layer; fc6 and fc7 have
dropout. Every definition takes num_classes, spp (None for the no-SPP baseline, or a pyramid
such as (6, 3, 2, 1)) and the SPP bin form.
"""
from layers import FC, LRN, Conv, Dropout, MaxPool, ReLU

from .specs import Spec, head, pool5_or_spp


def zf5(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """ZF-5: conv5 13x13 at 224 (10x10 at 180), feature stride 16."""
    pool5 = Spec("pool5", MaxPool, kernel=3, stride=2, ceil_mode=True)               # 6x6
    return [
        Spec("conv1", Conv, out_channels=96, kernel=7, stride=2, pad=1),             # 110x110
        Spec("relu1", ReLU),
        Spec("norm1", LRN),
        Spec("pool1", MaxPool, kernel=3, stride=2, ceil_mode=True),                  # 55x55
        Spec("conv2", Conv, out_channels=256, kernel=5, stride=2, pad=1, bias=0.1),  # 27x27
        Spec("relu2", ReLU),
        Spec("norm2", LRN),
        Spec("pool2", MaxPool, kernel=3, stride=2, ceil_mode=True),                  # 13x13
        Spec("conv3", Conv, out_channels=384, kernel=3, pad=1),                      # 13x13
        Spec("relu3", ReLU),
        Spec("conv4", Conv, out_channels=384, kernel=3, pad=1, bias=0.1),            # 13x13
        Spec("relu4", ReLU),
        Spec("conv5", Conv, out_channels=256, kernel=3, pad=1, bias=0.1),            # 13x13
        Spec("relu5", ReLU),
    ] + head(pool5_or_spp(spp, form, pool5), num_classes)


def convnet5(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """Convnet*-5 (AlexNet with pooling moved after conv2 and conv3): conv5 13x13."""
    pool5 = Spec("pool5", MaxPool, kernel=3, stride=2, ceil_mode=True)               # 6x6
    return [
        Spec("conv1", Conv, out_channels=96, kernel=11, stride=4, pad=2),            # 55x55
        Spec("relu1", ReLU),
        Spec("norm1", LRN),
        Spec("conv2", Conv, out_channels=256, kernel=5, pad=2, bias=0.1),            # 55x55
        Spec("relu2", ReLU),
        Spec("norm2", LRN),
        Spec("pool2", MaxPool, kernel=3, stride=2, ceil_mode=True),                  # 27x27
        Spec("conv3", Conv, out_channels=384, kernel=3, pad=1),                      # 27x27
        Spec("relu3", ReLU),
        Spec("pool3", MaxPool, kernel=3, stride=2, ceil_mode=True),                  # 13x13
        Spec("conv4", Conv, out_channels=384, kernel=3, pad=1, bias=0.1),            # 13x13
        Spec("relu4", ReLU),
        Spec("conv5", Conv, out_channels=256, kernel=3, pad=1, bias=0.1),            # 13x13
        Spec("relu5", ReLU),
    ] + head(pool5_or_spp(spp, form, pool5), num_classes)


def _overfeat(depth, num_classes, spp, form):
    pool5 = Spec("pool5", MaxPool, kernel=3, stride=3, ceil_mode=True)               # 6x6
    layers = [
        Spec("conv1", Conv, out_channels=96, kernel=7, stride=2),                    # 109x109
        Spec("relu1", ReLU),
        Spec("pool1", MaxPool, kernel=3, stride=3),                                  # 36x36 (floor)
        Spec("norm1", LRN),                                                          # pool, then LRN
        Spec("conv2", Conv, out_channels=256, kernel=5, pad=2, bias=0.1),            # 36x36
        Spec("relu2", ReLU),
        Spec("pool2", MaxPool, kernel=2, stride=2, ceil_mode=True),                  # 18x18
        Spec("conv3", Conv, out_channels=512, kernel=3, pad=1),                      # 18x18
        Spec("relu3", ReLU),
        Spec("conv4", Conv, out_channels=512, kernel=3, pad=1, bias=0.1),
        Spec("relu4", ReLU),
        Spec("conv5", Conv, out_channels=512, kernel=3, pad=1, bias=0.1),
        Spec("relu5", ReLU),
    ]
    for i in range(6, depth + 1):                       # Overfeat-7: conv6, conv7
        layers += [Spec(f"conv{i}", Conv, out_channels=512, kernel=3, pad=1, bias=0.1),
                   Spec(f"relu{i}", ReLU)]
    return layers + head(pool5_or_spp(spp, form, pool5), num_classes)


def overfeat5(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """Overfeat-5: conv5 18x18 at 224, feature stride 12."""
    return _overfeat(5, num_classes, spp, form)


def overfeat7(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """Overfeat-7: Overfeat-5 with conv6 and conv7 (512 x 3x3), conv7 18x18 at 224."""
    return _overfeat(7, num_classes, spp, form)


def small(num_classes=4, spp=(3, 2, 1), form="appendix"):
    """A ZF-5 in miniature for tests: every layer kind, tiny channel counts, any input from
    about 8x8 up. Larger init std so that gradients are not vanishingly small."""
    pool5 = Spec("pool5", MaxPool, kernel=3, stride=2, ceil_mode=True)
    return [
        Spec("conv1", Conv, out_channels=4, kernel=3, stride=2, pad=1, std=0.5, bias=0.1),
        Spec("relu1", ReLU),
        Spec("norm1", LRN, size=3, alpha=1.0, beta=0.75, k=2.0),
        Spec("pool1", MaxPool, kernel=3, stride=2, ceil_mode=True),
        Spec("conv2", Conv, out_channels=5, kernel=3, pad=1, std=0.5, bias=0.1),
        Spec("relu2", ReLU),
        pool5_or_spp(spp, form, pool5),
        Spec("fc6", FC, out_features=8, std=0.3, bias=0.5),
        Spec("relu6", ReLU),
        Spec("drop6", Dropout),
        Spec("fc8", FC, out_features=num_classes, std=0.3),
    ]


DEFINITIONS = {"zf5": zf5, "convnet5": convnet5, "overfeat5": overfeat5,
               "overfeat7": overfeat7, "small": small}
