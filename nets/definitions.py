"""The paper's networks (Sec. 3.1.1, Table 1 as restored in SPEC.md §2) and small nets of
the same shape for tests.

Init: Gaussian weights with He et al.'s per-layer std sqrt(2 / fan_in) (the authors' own
init for ReLU nets, 2015), fc8 std 0.01; biases 0, or 0.1 for conv2/4/5 as in Caffe's AlexNet.
The inputs are normalized to unit scale (train.views), which this init assumes.

Paddings are chosen, as the paper says, "to produce the expected output feature map size"
at 224 x 224; map sizes below are for that input. Pooling rounds up (ceil mode, as Caffe
and cuda-convnet did) unless noted. ReLU follows every conv and fc layer; fc6 and fc7 have
dropout. Every definition takes num_classes, spp (None for the no-SPP baseline, or a pyramid
such as (6, 3, 2, 1)) and the SPP bin form.
"""
from .specs import conv, dropout, fc, head, lrn, pool, pool5_or_spp, relu, spp as spp_spec


def zf5(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """ZF-5: conv5 13x13 at 224 (10x10 at 180), feature stride 16."""
    return [
        conv("conv1", 96, 7, stride=2, pad=1), relu("relu1"),  # 110x110
        lrn("norm1"), pool("pool1", 3, 2),                          # 55x55
        conv("conv2", 256, 5, stride=2, pad=1, bias=0.1), relu("relu2"),   # 27x27
        lrn("norm2"), pool("pool2", 3, 2),                          # 13x13
        conv("conv3", 384, 3, pad=1), relu("relu3"),                # 13x13
        conv("conv4", 384, 3, pad=1, bias=0.1), relu("relu4"),      # 13x13
        conv("conv5", 256, 3, pad=1, bias=0.1), relu("relu5"),      # 13x13
    ] + head(pool5_or_spp(spp, form, pool("pool5", 3, 2)), num_classes)   # 6x6


def convnet5(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """Convnet*-5 (AlexNet with pooling moved after conv2 and conv3): conv5 13x13."""
    return [
        conv("conv1", 96, 11, stride=4, pad=2), relu("relu1"),  # 55
        lrn("norm1"),
        conv("conv2", 256, 5, pad=2, bias=0.1), relu("relu2"),      # 55x55
        lrn("norm2"), pool("pool2", 3, 2),                          # 27x27
        conv("conv3", 384, 3, pad=1), relu("relu3"),                # 27x27
        pool("pool3", 3, 2),                                        # 13x13
        conv("conv4", 384, 3, pad=1, bias=0.1), relu("relu4"),      # 13x13
        conv("conv5", 256, 3, pad=1, bias=0.1), relu("relu5"),      # 13x13
    ] + head(pool5_or_spp(spp, form, pool("pool5", 3, 2)), num_classes)   # 6x6


def _overfeat(depth, num_classes, spp, form):
    layers = [
        conv("conv1", 96, 7, stride=2), relu("relu1"),  # 109x109
        pool("pool1", 3, 3, ceil=False), lrn("norm1"),              # 36x36 (pool, then LRN)
        conv("conv2", 256, 5, pad=2, bias=0.1), relu("relu2"),      # 36x36
        pool("pool2", 2, 2),                                        # 18x18
        conv("conv3", 512, 3, pad=1), relu("relu3"),                # 18x18
        conv("conv4", 512, 3, pad=1, bias=0.1), relu("relu4"),
        conv("conv5", 512, 3, pad=1, bias=0.1), relu("relu5"),
    ]
    for i in range(6, depth + 1):                                   # Overfeat-7: conv6, conv7
        layers += [conv(f"conv{i}", 512, 3, pad=1, bias=0.1), relu(f"relu{i}")]
    return layers + head(pool5_or_spp(spp, form, pool("pool5", 3, 3)), num_classes)   # 6x6


def overfeat5(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """Overfeat-5: conv5 18x18 at 224, feature stride 12."""
    return _overfeat(5, num_classes, spp, form)


def overfeat7(num_classes=1000, spp=(6, 3, 2, 1), form="appendix"):
    """Overfeat-7: Overfeat-5 with conv6 and conv7 (512 x 3x3), conv7 18x18 at 224."""
    return _overfeat(7, num_classes, spp, form)


def small(num_classes=4, spp=(3, 2, 1), form="appendix"):
    """A ZF-5 in miniature for tests: every layer kind, tiny channel counts, any input from
    about 8x8 up. Larger init std so that gradients are not vanishingly small."""
    pool5 = spp_spec("spp5", spp, form) if spp is not None else pool("pool5", 3, 2)
    return [
        conv("conv1", 4, 3, stride=2, pad=1, std=0.5, bias=0.1), relu("relu1"),
        lrn("norm1", 3, alpha=1.0, beta=0.75, k=2.0), pool("pool1", 3, 2),
        conv("conv2", 5, 3, pad=1, std=0.5, bias=0.1), relu("relu2"),
        pool5,
        fc("fc6", 8, std=0.3, bias=0.5), relu("relu6"), dropout("drop6"),
        fc("fc8", num_classes, std=0.3),
    ]


DEFINITIONS = {"zf5": zf5, "convnet5": convnet5, "overfeat5": overfeat5,
               "overfeat7": overfeat7, "small": small}
