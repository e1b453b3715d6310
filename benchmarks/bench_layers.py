"""Layer benchmarks: minispp (Numba kernels + NumPy BLAS) against PyTorch CPU, same process,
same inputs, same thread count. Prints medians and the ratio minispp / PyTorch (lower is
better for minispp).

    python benchmarks/bench_layers.py all --repeat 7
    python benchmarks/bench_layers.py conv|lrn|pool|spp|window_spp

PyTorch is only a reference here (`pip install torch==2.13.0` takes the CPU build on this
machine); without it the minispp times are printed alone.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # an entry point: before NumPy loads (train.cli)
import numpy as np  # noqa: E402
from timing import median_time  # noqa: E402
from layers import LRN, SPP, Conv, MaxPool, WindowSPP  # noqa: E402
from minispp import Params  # noqa: E402
from minispp.geometry import window_to_feature_map  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def report(name, ours, ref, target=None):
    if ref is None:
        print(f"{name:<34} minispp {ours * 1e3:9.2f} ms   (torch not installed)")
        return None
    ratio = ours / ref
    goal = f"   target <= {target}" if target else ""
    print(f"{name:<34} minispp {ours * 1e3:9.2f} ms   torch {ref * 1e3:9.2f} ms   "
          f"ratio {ratio:5.2f}{goal}")
    return ratio


def bench_conv(repeat, rng):
    N, C, H, W, Fo, k, s, p = 32, 96, 55, 55, 256, 5, 2, 1
    params = Params(np.float32)
    conv = Conv(Fo, k, s, p, name="conv2")
    out = conv.setup((N, C, H, W), params, rng)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    dy = rng.standard_normal(out, dtype=np.float32)
    fwd = median_time(lambda: conv.forward(x), repeat)
    both = median_time(lambda: (conv.forward(x), conv.backward(dy)), repeat)
    rf = rb = None
    if torch is not None:
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(params["conv2.W"].value, requires_grad=True)
        bt = torch.tensor(params["conv2.b"].value, requires_grad=True)
        dyt = torch.tensor(dy)
        with torch.no_grad():
            rf = median_time(lambda: F.conv2d(xt, wt, bt, stride=s, padding=p), repeat)
        rb = median_time(lambda: F.conv2d(xt, wt, bt, stride=s, padding=p).backward(dyt), repeat)
    report("conv2 forward", fwd, rf)
    return report("conv2 forward+backward", both, rb, 1.3)


def bench_lrn(repeat, rng):
    x = rng.standard_normal((32, 96, 110, 110), dtype=np.float32) * 20
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    lrn = LRN(5, 1e-4, 0.75, 1.0)
    both = median_time(lambda: (lrn.forward(x), lrn.backward(dy)), repeat)
    ref = None
    if torch is not None:
        xt, dyt = torch.tensor(x, requires_grad=True), torch.tensor(dy)
        ref = median_time(lambda: F.local_response_norm(xt, 5, 1e-4, 0.75, 1.0).backward(dyt), repeat)
    return report("LRN(5) forward+backward", both, ref, 0.5)


def bench_pool(repeat, rng):
    x = rng.standard_normal((32, 96, 110, 110), dtype=np.float32)
    pool = MaxPool(3, 2)
    out = pool.setup(x.shape)
    dy = rng.standard_normal(out, dtype=np.float32)
    both = median_time(lambda: (pool.forward(x), pool.backward(dy)), repeat)
    ref = None
    if torch is not None:
        xt, dyt = torch.tensor(x, requires_grad=True), torch.tensor(dy)
        ref = median_time(lambda: F.max_pool2d(xt, 3, 2).backward(dyt), repeat)
    return report("max pool 3x3/2 forward+backward", both, ref, 0.7)


def torch_spp(xt, levels):
    # adaptive_max_pool2d's bins are the Appendix floor/ceil bins
    return torch.cat([F.adaptive_max_pool2d(xt, n).reshape(xt.shape[0], -1) for n in levels], 1)


def bench_spp(repeat, rng):
    x = rng.standard_normal((32, 256, 13, 13), dtype=np.float32)
    spp = SPP((6, 3, 2, 1))
    out = spp.setup(x.shape)
    dy = rng.standard_normal(out, dtype=np.float32)
    both = median_time(lambda: (spp.forward(x), spp.backward(dy)), repeat)
    ref = None
    if torch is not None:
        xt, dyt = torch.tensor(x, requires_grad=True), torch.tensor(dy)
        ref = median_time(lambda: torch_spp(xt, (6, 3, 2, 1)).backward(dyt), repeat)
    return report("SPP(6,3,2,1) forward+backward", both, ref, 0.5)


def proposal_like_boxes(rng, count, width, height):
    """Boxes spread like selective-search proposals: log-uniform sides, any position."""
    w = np.exp(rng.uniform(np.log(24), np.log(width), count))
    h = np.exp(rng.uniform(np.log(24), np.log(height), count))
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1)


def bench_window_spp(repeat, rng):
    fmap = rng.standard_normal((1, 256, 43, 57), dtype=np.float32)   # conv5 of a 688x917 image
    boxes = proposal_like_boxes(rng, 2000, 917, 688)
    cells = window_to_feature_map(boxes, 16, (43, 57))
    wspp = WindowSPP((6, 3, 2, 1))
    ours = median_time(lambda: wspp.forward(fmap, cells, train=False), repeat)
    ref = None
    if torch is not None:
        ft = torch.tensor(fmap)

        def loop():
            with torch.no_grad():
                return torch.cat([torch_spp(ft[:, :, b:d + 1, a:c + 1], (6, 3, 2, 1))
                                  for a, b, c, d in cells.tolist()])
        ref = median_time(loop, max(3, repeat // 2), warmup=1)
    return report("WindowSPP 2000 windows forward", ours, ref, 0.3)


BENCHES = {"conv": bench_conv, "lrn": bench_lrn, "pool": bench_pool, "spp": bench_spp,
           "window_spp": bench_window_spp}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="?", default="all", choices=["all", *BENCHES])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per side (median)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    import numba
    threads = numba.get_num_threads()
    tinfo = f"torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else "no torch"
    print(f"minispp vs PyTorch CPU: numba {numba.__version__}, {threads} threads; {tinfo}; "
          f"median of {args.repeat}")
    for name in (BENCHES if args.which == "all" else [args.which]):
        BENCHES[name](args.repeat, rng)


if __name__ == "__main__":
    main()
