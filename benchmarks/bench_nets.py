"""Whole-network benchmark: ZF-5 with SPP (6,3,2,1), float32, batch 32, at 224 x 224 and
180 x 180 (the two sizes of multi-size training), minispp against the same architecture in
PyTorch CPU (nn.LocalResponseNorm, adaptive max pooling for SPP) with the same weights, in
the same process and thread count. Prints images/s of the forward pass, of forward+backward,
and of a whole training step (with the SGD momentum/weight-decay update, torch.optim.SGD on
the PyTorch side), the ratios minispp / PyTorch, and where minispp's time goes per layer.
The time the training loop waits for data is in each run's log (data_wait).

    python benchmarks/bench_nets.py --repeat 3
    python benchmarks/bench_nets.py --net overfeat7 --sizes 224 --batch 16
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # an entry point: before NumPy loads (train.cli)
import numpy as np  # noqa: E402
from timing import median_time, paired_times  # noqa: E402
from minispp.layer import finite_checks  # noqa: E402
from minispp.solver import SGD  # noqa: E402
from nets import build, parse_size, parse_spp  # noqa: E402

try:
    import torch
    from torch_nets import torch_net
except ImportError:
    torch = None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="zf5")
    ap.add_argument("--spp", default="6,3,2,1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", default="224,180", help="comma-separated input sizes")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per side (median)")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer breakdown")
    ap.add_argument("--contract", action="store_true",
                    help="also time forward+backward with conv1's input gradient (what "
                         "propagate_down saves) and with the NaN scan of every layer input")
    args = ap.parse_args()
    model = build(args.net, num_classes=1000, spp=parse_spp(args.spp), rng=np.random.default_rng(0))
    ref = torch_net(model) if torch is not None else None
    rng = np.random.default_rng(1)
    B = args.batch
    print(f"{args.net} spp={args.spp} batch {B} float32, median of {args.repeat}; "
          f"torch {'%s, %d threads' % (torch.__version__, torch.get_num_threads()) if torch else 'not installed'}")
    for s in args.sizes.split(","):
        h, w = parse_size(s)
        net = model.instance(batch=B, size=(h, w))
        x = rng.standard_normal((B, 3, h, w), dtype=np.float32) * 50
        labels = rng.integers(0, 1000, B)

        def ours_fwd():
            net.forward(x, train=False)

        def ours_train(input_grad=False, scan=False):
            with finite_checks(scan):         # the trainer runs without the NaN scan
                model.params.zero_grad()
                net.loss(x, labels, train=True)
                net.backward(input_grad=input_grad)
        sgd = SGD(model.params, lr=1e-6)

        def ours_step():                      # one whole training step: + the SGD update
            ours_train()
            sgd.step()
        f = median_time(ours_fwd, args.repeat)
        fb = median_time(ours_train, args.repeat)
        st = median_time(ours_step, args.repeat)
        line = [f"{h}x{w}: minispp forward {B / f:7.1f} img/s, forward+backward {B / fb:6.1f} img/s, "
                f"training step {B / st:6.1f} img/s"]
        if ref is not None:
            xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
            ref.eval()

            def ref_fwd():
                with torch.no_grad():
                    ref(xt)

            def ref_train():
                ref.train()
                ref.zero_grad()
                torch.nn.functional.cross_entropy(ref(xt), lt).backward()
            opt = torch.optim.SGD(ref.parameters(), lr=1e-6, momentum=0.9, weight_decay=5e-4)

            def ref_step():
                ref_train()
                opt.step()
            rf = median_time(ref_fwd, args.repeat)
            rfb = median_time(ref_train, args.repeat)
            rst = median_time(ref_step, args.repeat)
            line.append(f"   torch forward {B / rf:7.1f} img/s, forward+backward {B / rfb:6.1f} img/s, "
                        f"training step {B / rst:6.1f} img/s")
            line.append(f"   ratio (time minispp / torch): forward {f / rf:.2f}, forward+backward "
                        f"{fb / rfb:.2f}, training step {st / rst:.2f}")
        if args.contract:
            # the three variants interleaved, in a rotating order each round, so that drift of
            # a shared machine (another process, the clock) falls on all three alike; the
            # ratios are medians of each round's ratios
            variants = {"base": ours_train, "dx": lambda: ours_train(input_grad=True),
                        "scan": lambda: ours_train(scan=True)}
            rounds = paired_times(variants, max(args.repeat, 5))
            med = {k: float(np.median(v)) for k, v in rounds.items()}
            r_dx = float(np.median(np.array(rounds["dx"]) / np.array(rounds["base"])))
            r_scan = float(np.median(np.array(rounds["scan"]) / np.array(rounds["base"])))
            line.append(f"   contract, {len(rounds['base'])} interleaved rounds: forward+backward "
                        f"{B / med['base']:6.1f} img/s; also computing d/d image (no "
                        f"propagate_down) {B / med['dx']:6.1f} img/s, {r_dx:.3f}x the time; with "
                        f"the NaN scan of every layer input {B / med['scan']:6.1f} img/s, "
                        f"{r_scan:.3f}x the time")
        print("\n".join(line))
        if not args.no_layers:
            prof = net.profile(x, labels)
            total = sum(a + b for _, a, b in prof)
            print(f"   where minispp's forward+backward time goes ({total * 1e3:.0f} ms):")
            for name, a, b in prof:
                if a + b > 0.01 * total:
                    print(f"     {name:<8} forward {a * 1e3:7.1f} ms  backward {b * 1e3:7.1f} ms  "
                          f"{100 * (a + b) / total:5.1f}%")


if __name__ == "__main__":
    main()
