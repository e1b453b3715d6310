"""Gradient checking by central differences (Caffe's GradientChecker, CS231n's
eval_numerical_gradient): the tool that makes a hand-written backward trustworthy.

For a layer y = f(x, params) and a fixed random upstream gradient g, the checked scalar is
L = sum(f(x) * g). Its numerical derivative for element i is the five-point central
difference

    sum((8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))) * g) / (12 h)

computed from *differences of outputs* (not of large sums), so unchanged outputs cancel
exactly and rounding stays at the level of the outputs that moved. Run it in float64: with
h = 1e-4 the truncation error is O(h^4) ~ 1e-16 and the rounding error O(1e-16 / h) ~ 1e-12,
so even gradients of size 1e-5 are checked to better than 1e-6 relative. Inputs of max-type
layers must be spaced further apart than 2h so that no perturbation changes a winner.

The error of one tensor is max_i |a_i - n_i| / max(|a_i| + |n_i|, floor): relative where the
gradient is not tiny, absolute below ``floor`` (gradients that are exactly 0 on both sides,
such as a max pool's losers, count as 0 error).
"""
import numpy as np

FLOOR = 1e-7


def relative_error(analytic, numeric, floor=FLOOR):
    """Largest elementwise relative error between two gradient arrays."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient shapes differ: analytic {a.shape}, numeric {n.shape}")
    if a.size == 0:
        return 0.0
    return float((np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), floor)).max())


def numerical_gradient(f, x, upstream, h=1e-4):
    """d sum(f() * upstream) / dx by five-point central differences; x is perturbed in place
    and restored.

    f: no-argument callable returning an array (or a float when upstream is 1.0).
    x: float64 array the output depends on. Returns an array shaped like x.
    """
    if x.dtype != np.float64:
        raise ValueError(f"gradient checks run in float64, got {x.dtype}")
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so it can be perturbed in place")
    g = np.asarray(upstream, dtype=np.float64)
    for i in range(flat.size):
        old = flat[i]
        out = {}
        for step in (1, -1, 2, -2):
            flat[i] = old + step * h
            out[step] = np.asarray(f(), dtype=np.float64)
        flat[i] = old
        diff = 8 * (out[1] - out[-1]) - (out[2] - out[-2])
        grad.reshape(-1)[i] = np.sum(diff * g) / (12 * h)
    return grad


def check_layer(layer, x, *args, rng=None, h=1e-4):
    """Compare a set-up layer's backward with central differences.

    layer: a Layer already set up (float64 Params for parametrized layers). x: float64 input.
    args: extra forward arguments (the windows of WindowSPP). Returns {"x": err, "<name>.W":
    err, ...}: the largest relative error of the input gradient and of each parameter.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = layer.forward(x, *args, train=True)
    upstream = rng.standard_normal(np.shape(y))
    params = [layer.params[n] for n in layer.param_names]
    for p in params:
        p.grad[...] = 0
    dx = layer.backward(upstream)
    analytic = {"x": dx, **{p.name: p.grad.copy() for p in params}}

    def f():
        return layer.forward(x, *args, train=True)

    errors = {"x": relative_error(analytic["x"], numerical_gradient(f, x, upstream, h))}
    for p in params:
        errors[p.name] = relative_error(analytic[p.name], numerical_gradient(f, p.value, upstream, h))
    return errors


def check_net(net, x, labels, params, h=1e-4):
    """Compare a whole net's backward (loss -> input and every parameter) with central
    differences of the loss. Dropout layers should be frozen first. Returns errors as
    check_layer does."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    params.zero_grad()
    net.loss(x, labels, train=True)
    dx = net.backward(input_grad=True)
    analytic = {"x": dx, **{n: params[n].grad.copy() for n in net.param_names()}}

    def f():
        return net.loss(x, labels, train=True)

    errors = {"x": relative_error(analytic["x"], numerical_gradient(f, x, 1.0, h))}
    for n in net.param_names():
        errors[n] = relative_error(analytic[n], numerical_gradient(f, params[n].value, 1.0, h))
    return errors
