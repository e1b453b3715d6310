"""The SGD update in one pass over each parameter (fc6 alone is 52 M values)."""
import numba as nb


@nb.njit(parallel=True, cache=True, fastmath=True)
def sgd_momentum_update(w, g, v, lr, momentum, decay):
    """Caffe's SGD with momentum and L2 weight decay, in place on flat arrays:
        v = momentum v + lr (g + decay w);  w = w - v
    """
    for i in nb.prange(w.shape[0]):
        vi = momentum * v[i] + lr * (g[i] + decay * w[i])
        v[i] = vi
        w[i] -= vi
