"""Softmax + multinomial cross-entropy, averaged over the batch (fc8's loss)."""
import numpy as np

from minispp.backend import get_array_module, to_numpy
from minispp.layer import Layer


class SoftmaxLoss(Layer):
    """loss = -(1/N) sum_n log softmax(s_n)[t_n].

    forward(scores (N, K), labels (N,) ints in [0, K)) -> float. Stable: the row max is
    subtracted before exp. backward(dloss=1.0) -> dscores = dloss * (softmax - onehot) / N.
    ``probs`` holds the last softmax.
    """

    prefix = "loss"
    rank = 2
    n_inputs = 2          # scores and labels
    saves = ("probs", "labels")

    def __init__(self, name=None):
        super().__init__(name)
        self.probs = None

    def infer_shape(self, in_shape):
        return ()

    def _forward_cpu(self, scores, labels, train=True):
        xp = get_array_module(scores)
        N, K = scores.shape
        labels = to_numpy(labels)           # checked on the host (N values)
        if labels.shape != (N,):
            raise ValueError(f"{self._who()}: labels must have shape ({N},), got {labels.shape}")
        if labels.dtype.kind not in "iu":
            if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
                labels = labels.astype(np.int64)
            else:
                raise ValueError(f"{self._who()}: labels must be integers, got {labels.dtype}")
        bad = (labels < 0) | (labels >= K)
        if bad.any():
            r = int(np.nonzero(bad)[0][0])
            raise ValueError(f"{self._who()}: label {int(labels[r])} in row {r} is outside [0, {K})")
        log_probs = log_softmax(scores)
        self.probs = xp.exp(log_probs)
        labels = xp.asarray(labels.astype(np.int64))     # a copy: the caller may reuse its array
        self.save(probs=self.probs, labels=labels)
        return float(-log_probs[xp.arange(N), labels].mean())

    def _backward_cpu(self, dloss=1.0, propagate_down=True):
        probs, labels = self.saved.probs, self.saved.labels
        N = probs.shape[0]
        d = probs.copy()
        d[get_array_module(probs).arange(N), labels] -= 1
        d *= dloss / N
        return d

    # one body for both devices: the labels are checked on the host, the rest is array ops
    _forward_gpu = _forward_cpu
    _backward_gpu = _backward_cpu


def log_softmax(scores):
    """Row-wise log softmax, stable: the row max is subtracted before exp (NumPy or CuPy)."""
    xp = get_array_module(scores)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(scores):
    """Row-wise softmax probabilities (the one softmax of minispp)."""
    return get_array_module(scores).exp(log_softmax(scores))
