"""Print a network's layers, output shapes, parameters and multiply-accumulates.

examples:
  python -m nets zf5 --spp 6,3,2,1 --size 224
  python -m nets zf5 --spp 6,3,2,1 --size 427x640      # a full image (height x width)
  python -m nets overfeat7 --spp none --size 224       # the no-SPP baseline
  python -m nets convnet5 --spp 4,3,2,1 --classes 20
"""
import argparse
import sys

from .definitions import DEFINITIONS
from .model import build, parse_size, parse_spp


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", choices=sorted(DEFINITIONS))
    ap.add_argument("--spp", default="6,3,2,1", help="pyramid levels, or 'none' (default 6,3,2,1)")
    ap.add_argument("--form", default="appendix", choices=["appendix", "fixed"],
                    help="SPP bin form (default appendix)")
    ap.add_argument("--size", default="224", help="input size N or HxW (default 224)")
    ap.add_argument("--classes", type=int, default=1000, help="fc8 outputs (default 1000)")
    args = ap.parse_args(argv)
    try:
        model = build(args.net, num_classes=args.classes, spp=parse_spp(args.spp), form=args.form)
        net = model.instance(batch=1, size=parse_size(args.size))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(net.summary_table())
    print(f"  feature stride of the conv trunk: {model.feature_stride}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
