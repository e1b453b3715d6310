"""The SGD update in one pass over each parameter (fc6 alone is 52 M values).

Compiled without fast-math contraction: with fastmath=True LLVM fused the update into FMAs
where the CPU has them, so the same run gave other bits on another CPU; the pass is bound by
memory bandwidth, and separate multiplies and adds cost nothing."""
import numba as nb


@nb.njit(parallel=True, cache=True, fastmath={"nnan", "ninf", "nsz"})
def sgd_momentum_update(w, g, v, lr, momentum, decay):
    """Caffe's SGD with momentum and L2 weight decay, in place on flat arrays:
        v = momentum v + lr (g + decay w);  w = w - v
    """
    for i in nb.prange(w.shape[0]):
        vi = momentum * v[i] + lr * (g[i] + decay * w[i])
        v[i] = vi
        w[i] -= vi
