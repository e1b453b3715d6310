"""The comparisons shared by the GPU-body checks on the simulated device
(tests/gpu_sim_bodies.py, CPU-only CI) and on a real GPU (tests/test_gpu.py): each runs a
layer, the SGD update or a whole net once on the CPU and once on the GPU device
(minispp.backend.gpu_module(): CuPy, or the simulated device) from the same seeds, and returns
its mismatches as text (empty when they agree), after checking that the GPU results really
are device arrays (the GPU body ran, not the CPU one). Imports nothing of numba.cuda.
"""
import numpy as np

import nets
from layers import FC, LRN, SPP, Conv, Dropout, MaxPool, ReLU, WindowSPP
from minispp import Params, backend
from minispp.backend import get_array_module, to_numpy
from minispp.solver import SGD

DTYPES = (np.float32, np.float64)


def tol(dtype):
    """float32: to rounding (2e-5) on the simulated device, which runs the kernels' own
    arithmetic; 1e-4 on a real GPU, where cuDNN may pick Winograd or FFT engines for float32
    and NVVM fuses multiply-adds. float64: 1e-11 on both."""
    if dtype != np.float32:
        return dict(rtol=1e-11, atol=1e-13)
    return dict(rtol=2e-5, atol=2e-6) if backend.simulated_gpu() else dict(rtol=1e-4, atol=1e-5)


def diff(name, got, want, exact, dtype):
    """Mismatch descriptions (empty when they agree); got must be a device result."""
    if got is None or want is None:
        return [] if got is None and want is None else [f"{name}: gpu {got!r} cpu {want!r}"]
    if not np.isscalar(got) and get_array_module(got) is np:
        return [f"{name}: the GPU body returned a {type(got).__name__}, not a device array"]
    got, want = np.asarray(to_numpy(got), np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return [f"{name}: shape {got.shape} != {want.shape}"]
    bad = got != want if exact else ~np.isclose(got, want, **tol(dtype))
    if not bad.any():
        return []
    at = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
    return [f"{name}: {int(bad.sum())} of {bad.size} differ, first at {at}: gpu {got[at]!r} "
            f"cpu {want[at]!r}"]


def run_layer(make, x, more, device, seed=0, train=True, propagate_down=True, dy_seed=1,
              integer_dy=False):
    """(y, dx, {param: grad}) of a fresh layer from make() on device, for input x (host).
    integer_dy: dy of small integers, whose sums are exact in any order. The SPP kernels add
    their gradients with atomics, in an order a real GPU does not fix (the simulator runs the
    threads in index order, which hides it), so an exact dx needs addends that sum exactly."""
    dtype = x.dtype
    params = Params(dtype)
    layer = make()
    layer.setup(x.shape, params, rng=np.random.default_rng(seed))
    params.to(device)
    xp = backend.module_of(device)
    y = layer.forward(xp.asarray(x), *more, train=train)
    if np.isscalar(y):
        dy = None
    else:
        rng = np.random.default_rng(dy_seed)
        if integer_dy:                   # nonzero, so that every routed gradient shows
            dy = rng.integers(1, 5, y.shape) * rng.choice([-1, 1], y.shape)
        else:
            dy = rng.standard_normal(y.shape)
        dy = xp.asarray(dy.astype(dtype))
    dx = layer.backward(dy, propagate_down=propagate_down)
    return y, dx, {n: params[n].grad for n in params}


def layer_mismatches(make, x, more=(), exact=False, **kw):
    """The GPU body's y, dx and parameter gradients against the CPU body's; exact: y and dx
    bit for bit, with an integer-valued dy (run_layer)."""
    kw.setdefault("integer_dy", exact)
    cy, cdx, cg = run_layer(make, x, more, "cpu", **kw)
    gy, gdx, gg = run_layer(make, x, more, "gpu", **kw)
    out = diff("y", gy, cy, exact, x.dtype) + diff("dx", gdx, cdx, exact, x.dtype)
    for name in cg:
        out += diff(name + ".grad", gg[name], cg[name], False, x.dtype)
    return out


def values(shape, dtype, kind="random", seed=0):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if kind == "ties":                       # small integers: many ties, as after a ReLU
        v = rng.integers(0, 3, shape)
    elif kind == "distinct":
        v = (rng.permutation(n).reshape(shape) - n / 2) * 0.25
    else:
        v = rng.standard_normal(shape)
    return np.ascontiguousarray(v, dtype=dtype)


# ---------------------------------------------------------------------------- layer cases

def keyed_dropout():
    """Masks drawn per sample from keys (the data-parallel rule): the GPU body's too."""
    layer = Dropout(0.4)
    layer.key_masks((3, 1), [17, 4, 9])
    return layer


LAYER_CASES = {
    # name: (factory, input shape, input kind, exact)
    "conv-k3s2p1": (lambda: Conv(out_channels=3, kernel=3, stride=2, pad=1, bias=0.2),
                    (2, 2, 5, 6), "random", False),
    "conv-k2x3s1": (lambda: Conv(out_channels=2, kernel=(2, 3), stride=1, pad=(0, 1)),
                    (1, 3, 4, 4), "random", False),
    "pool-3s2-ceil": (lambda: MaxPool(3, 2, ceil_mode=True), (2, 2, 6, 7), "ties", True),
    "pool-3s2p1-floor": (lambda: MaxPool(3, 2, pad=1), (1, 3, 5, 5), "ties", True),
    "lrn-5": (lambda: LRN(size=5, alpha=0.5, beta=0.75, k=2.0), (1, 6, 2, 3), "random", False),
    "lrn-4-beta0.6": (lambda: LRN(size=4, alpha=0.3, beta=0.6, k=1.0), (1, 5, 2, 2), "random",
                      False),
    "relu": (lambda: ReLU(), (2, 3, 2, 2), "random", True),
    "fc": (lambda: FC(out_features=4, bias=0.1), (3, 2, 2, 2), "random", False),
    "dropout": (lambda: Dropout(0.5, rng=np.random.default_rng(7)), (3, 10), "random", True),
    "dropout-keyed": (keyed_dropout, (3, 2, 2, 2), "random", True),
    "spp-3-2-1": (lambda: SPP((3, 2, 1)), (2, 2, 5, 7), "ties", True),
    "spp-fixed-2-1": (lambda: SPP((2, 1), form="fixed"), (1, 3, 5, 4), "ties", True),
}


def layer_case(name, dtype, **kw):
    make, shape, kind, exact = LAYER_CASES[name]
    return layer_mismatches(make, values(shape, dtype, kind), exact=exact, **kw)


def window_spp_mismatches(dtype, feature_stride=None, kind="ties"):
    x = values((1, 2, 9, 11), dtype, kind)
    if feature_stride is None:
        windows = np.array([[0, 0, 10, 8], [2, 1, 7, 6], [4, 4, 4, 4], [0, 3, 10, 5]])
    else:                           # image pixels, projected on the host (Appendix)
        windows = np.array([[0.0, 0.0, 170.0, 140.0], [20.0, 30.0, 90.0, 100.0],
                            [64.0, 64.0, 70.0, 70.0]])
    return layer_mismatches(lambda: WindowSPP((3, 2, 1), feature_stride=feature_stride), x,
                            (windows,), exact=True)



# ---------------------------------------------------------------------------- SGD

def sgd_mismatches(dtype, update=None, steps=3):
    """A few SGD steps on device parameters (the numba.cuda update) against the CPU's."""
    results = []
    for device in ("cpu", "gpu"):
        params = Params(dtype)
        rng = np.random.default_rng(0)
        for name, shape, lr, decay in (("a.W", (3, 7), 1.0, 1.0), ("a.b", (5,), 2.0, 0.0)):
            params.get_or_create(name, shape, lambda s: rng.standard_normal(s), lr, decay)
        params.to(device)
        solver = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
        xp = backend.module_of(device)
        for step in range(steps):
            for p in params.values():
                p.grad[...] = xp.asarray(np.random.default_rng(step).standard_normal(p.shape))
            if device == "gpu" and update is not None:
                from minispp.kernels.gpu import sgd as gpu_sgd
                real = gpu_sgd.sgd_momentum_update
                gpu_sgd.sgd_momentum_update = update
                try:
                    solver.step()
                finally:
                    gpu_sgd.sgd_momentum_update = real
            else:
                solver.step()
        results.append(params)
    cpu, gpu = results
    out = []
    for name in cpu:
        out += diff(name, gpu[name].value, cpu[name].value, False, dtype)
        out += diff(name + " momentum", gpu[name].state["momentum"],
                    cpu[name].state["momentum"], False, dtype)
    return out



# ---------------------------------------------------------------------------- the whole net

def net_run(device, dtype, steps=2, size=16, batch=2):
    """nets' "small" model (conv-relu-lrn-pool-conv-relu-spp-fc-relu-dropout-fc + softmax)
    on device: per step the loss, every parameter gradient and, after SGD, the values."""
    model = nets.build("small", num_classes=3, spp=(3, 2, 1), rng=np.random.default_rng(0),
                       dtype=dtype, device=device)
    net = model.instance(batch=batch, size=(size, size))
    solver = SGD(model.params, lr=0.05)
    rng = np.random.default_rng(5)
    trace = []
    for _ in range(steps):
        x = model.xp.asarray(rng.standard_normal((batch, 3, size, size)).astype(dtype))
        labels = rng.integers(0, 3, batch)
        model.params.zero_grad()
        loss = net.loss(x, labels)
        dx = net.backward(input_grad=True)
        grads = {n: model.params[n].grad.copy() for n in model.params}
        solver.step()
        trace.append((loss, dx, grads, {n: model.params[n].value.copy() for n in model.params}))
    return model, trace


def net_mismatches(dtype, steps=2):
    _, cpu = net_run("cpu", dtype, steps)
    _, gpu = net_run("gpu", dtype, steps)
    out = []
    for i, ((cl, cdx, cg, cv), (gl, gdx, gg, gv)) in enumerate(zip(cpu, gpu)):
        out += diff(f"step {i} loss", gl, cl, False, dtype)
        out += diff(f"step {i} d image", gdx, cdx, False, dtype)
        for name in cg:
            out += diff(f"step {i} {name}.grad", gg[name], cg[name], False, dtype)
            out += diff(f"step {i} {name} after SGD", gv[name], cv[name], False, dtype)
    return out
