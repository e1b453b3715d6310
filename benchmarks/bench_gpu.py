"""GPU benchmarks (`make bench-gpu`, issue 13 item 4): minispp's GPU path against PyTorch CUDA
in the same process, on the same weights and inputs, float32 with TF32 off on both sides
(PyTorch: torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False;
minispp: CuPy's matmul does not use TF32 unless CUPY_TF32=1, refused here, and the cuDNN
plans deselect the Tensor Core engines, minispp/kernels/gpu/cudnn_conv.py). Every timing
synchronizes the device before the clock stops; the two sides run interleaved
(benchmarks/timing.py, paired_times) and are compared by the median of per-round ratios.

  1. the ZF-5 SPP(6,3,2,1) training step (forward, backward, SGD with momentum) at batch 128,
     224 x 224 and 180 x 180: images/s (the check: at least 0.9x PyTorch + cuDNN);
  2. each layer's forward + backward in that net at 224 (where the time goes);
  3. WindowSPP of 2,000 proposal-like windows on a (1, 256, 43, 57) conv5 map against four
     torchvision.ops.roi_pool calls, one per level (the check: faster);
  4. conv1-5 of one 688 x 917 image (the paper's Table 10: 0.053 s for SPP-net's convolutions
     at one scale on a GTX Titan; the check: faster than that).

    python benchmarks/bench_gpu.py --repeat 7 [--only step,layers,window_spp,conv5]

Written without a GPU at hand and not yet run (README, "The GPU path": the figures owed).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from timing import paired_times  # noqa: E402

PARTS = ("step", "layers", "window_spp", "conv5")
TABLE10_CONV_S = 0.053


def ratio(times, ours="minispp", ref="torch"):
    """Median over rounds of ref / ours: above 1, minispp is faster."""
    return statistics.median(r / o for o, r in zip(times[ours], times[ref]))


def synced(fn, cupy, torch):
    def run():
        fn()
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
    return run


def bench_step(model, tmodel, sizes, batch, repeat, cupy, torch):
    from minispp.layer import finite_checks
    from minispp.solver import SGD
    rng = np.random.default_rng(1)
    sgd = SGD(model.params, lr=1e-6)
    topt = torch.optim.SGD(tmodel.parameters(), lr=1e-6, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    for size in sizes:
        net = model.instance(batch=batch, size=(size, size))
        host = rng.standard_normal((batch, 3, size, size), dtype=np.float32) * 50
        labels = rng.integers(0, 1000, batch)
        x, xt = cupy.asarray(host), torch.from_numpy(host).cuda()
        lt = torch.from_numpy(labels).cuda()

        def ours():
            with finite_checks(False):             # as the trainer runs
                model.params.zero_grad()
                net.loss(x, labels, train=True)
                net.backward()
                sgd.step()

        def ref():
            topt.zero_grad(set_to_none=False)
            loss_fn(tmodel(xt), lt).backward()
            topt.step()
        tmodel.train()
        t = paired_times({"minispp": synced(ours, cupy, torch), "torch": synced(ref, cupy, torch)},
                         repeat)
        o, r = statistics.median(t["minispp"]), statistics.median(t["torch"])
        print(f"ZF-5 SPP training step, batch {batch}, {size}x{size}: minispp {batch / o:8.1f} "
              f"img/s, PyTorch {batch / r:8.1f} img/s, ratio {ratio(t):.2f}x (target >= 0.90x)")


def bench_layers(model, tmodel, batch, repeat, cupy, torch):
    """Forward + backward of each layer on the inputs it sees in the net at 224."""
    net = model.instance(batch=batch, size=(224, 224))
    rng = np.random.default_rng(2)
    h = cupy.asarray(rng.standard_normal((batch, 3, 224, 224), dtype=np.float32) * 50)
    ht = torch.as_tensor(h, device="cuda")
    mods = [m for m in tmodel if not isinstance(m, torch.nn.Flatten)]
    print(f"per layer, forward+backward, batch {batch}, 224x224 (ms; ratio = PyTorch / minispp):")
    for layer, mod in zip(net.layers, mods):
        y = layer.forward(h, train=True)
        dy = cupy.asarray(rng.standard_normal(y.shape, dtype=np.float32))
        xin = ht.detach().reshape(h.shape).requires_grad_(True)
        dyt = torch.as_tensor(dy, device="cuda")

        def ours(layer=layer, h=h, dy=dy):
            layer.forward(h, train=True)
            layer.backward(dy)

        def ref(mod=mod, xin=xin, dyt=dyt):
            mod(xin.flatten(1) if isinstance(mod, torch.nn.Linear) else xin).reshape(
                dyt.shape).backward(dyt)
        t = paired_times({"minispp": synced(ours, cupy, torch), "torch": synced(ref, cupy, torch)},
                         repeat)
        print(f"  {layer.name:<8} {type(layer).__name__:<8} minispp "
              f"{1e3 * statistics.median(t['minispp']):8.2f}  PyTorch "
              f"{1e3 * statistics.median(t['torch']):8.2f}  ratio {ratio(t):.2f}x")
        h, ht = y, torch.as_tensor(y, device="cuda")


def bench_window_spp(repeat, cupy, torch):
    from torchvision.ops import roi_pool

    from layers import WindowSPP
    from minispp.geometry import window_to_feature_map
    rng = np.random.default_rng(3)
    fmap = cupy.asarray(rng.standard_normal((1, 256, 43, 57), dtype=np.float32))
    w = np.exp(rng.uniform(np.log(24), np.log(917), 2000))
    hh = np.exp(rng.uniform(np.log(24), np.log(688), 2000))
    x1, y1 = rng.uniform(0, 917 - w), rng.uniform(0, 688 - hh)
    boxes = np.stack([x1, y1, x1 + w - 1, y1 + hh - 1], 1)
    cells = window_to_feature_map(boxes, 16, (43, 57))
    wspp = WindowSPP((6, 3, 2, 1))
    ft = torch.as_tensor(fmap, device="cuda")
    rois = torch.as_tensor(np.concatenate([np.zeros((len(cells), 1)), cells], 1),
                           dtype=torch.float32, device="cuda")

    def ours():
        wspp.forward(fmap, cells, train=False)

    def ref():
        with torch.no_grad():
            torch.cat([roi_pool(ft, rois, (n, n), 1.0).flatten(1) for n in (6, 3, 2, 1)], 1)
    t = paired_times({"minispp": synced(ours, cupy, torch), "torch": synced(ref, cupy, torch)},
                     repeat)
    print(f"WindowSPP 2,000 windows on 1x256x43x57: minispp "
          f"{1e3 * statistics.median(t['minispp']):.2f} ms (one launch, windows projected on the "
          f"host), 4 x roi_pool {1e3 * statistics.median(t['torch']):.2f} ms, ratio "
          f"{ratio(t):.2f}x (target > 1)")


def bench_conv5(model, tmodel, repeat, cupy, torch):
    trunk = model.trunk((688, 917))
    tt = tmodel[:model.trunk_length]
    host = np.random.default_rng(4).standard_normal((1, 3, 688, 917), dtype=np.float32) * 50
    x, xt = cupy.asarray(host), torch.from_numpy(host).cuda()

    def ref():
        with torch.no_grad():
            tt(xt)
    t = paired_times({"minispp": synced(lambda: trunk.forward(x), cupy, torch),
                      "torch": synced(ref, cupy, torch)}, repeat)
    o = statistics.median(t["minispp"])
    print(f"conv1-5 of one 688x917 image: minispp {o:.4f} s, PyTorch "
          f"{statistics.median(t['torch']):.4f} s, ratio {ratio(t):.2f}x; the paper's Table 10: "
          f"{TABLE10_CONV_S} s on a GTX Titan ({'beaten' if o < TABLE10_CONV_S else 'NOT beaten'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7, help="interleaved rounds (median)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", default="224,180")
    ap.add_argument("--only", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    args = ap.parse_args()
    parts = args.only.split(",")
    if set(parts) - set(PARTS):
        sys.exit(f"error: --only takes {','.join(PARTS)}, got {args.only}")
    from minispp import backend
    if not backend.gpu_available():
        sys.exit("error: bench_gpu.py needs CuPy and a CUDA GPU (pip install -e '.[gpu]')")
    if os.environ.get("CUPY_TF32") == "1":
        sys.exit("error: CUPY_TF32=1 would let CuPy's matmul use TF32; unset it")
    import cupy
    import torch
    if not torch.cuda.is_available():
        sys.exit("error: bench_gpu.py compares with PyTorch CUDA, and torch sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True          # PyTorch at its best: tuned conv algorithms
    import nets
    from torch_nets import torch_net
    from minispp.kernels.gpu import cudnn_conv
    model = nets.build("zf5", num_classes=1000, spp=(6, 3, 2, 1), rng=np.random.default_rng(0))
    tmodel = torch_net(model).cuda()               # the same weights, copied before the move
    model.to("gpu")
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    frontend = ("not installed: conv by im2col + cuBLAS" if cudnn_conv.cudnn is None
                else cudnn_conv.cudnn.__version__)
    print(f"{name}; CuPy {cupy.__version__}, PyTorch {torch.__version__}, cuDNN Frontend "
          f"{frontend}; float32, TF32 off on both sides; {args.repeat} interleaved rounds")
    if "step" in parts:
        bench_step(model, tmodel, [int(s) for s in args.sizes.split(",")], args.batch,
                   args.repeat, cupy, torch)
    if "layers" in parts:
        bench_layers(model, tmodel, args.batch, args.repeat, cupy, torch)
    if "window_spp" in parts:
        bench_window_spp(args.repeat, cupy, torch)
    if "conv5" in parts:
        bench_conv5(model, tmodel, args.repeat, cupy, torch)


if __name__ == "__main__":
    main()
