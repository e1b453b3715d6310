"""Softmax + multinomial cross-entropy, averaged over the batch (fc8's loss)."""
import numpy as np

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
        N, K = scores.shape
        labels = np.asarray(labels)
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
        self.probs = np.exp(log_probs)
        labels = labels.astype(np.int64)
        self.save(probs=self.probs, labels=labels)
        return float(-log_probs[np.arange(N), labels].mean())

    def _backward_cpu(self, dloss=1.0, propagate_down=True):
        probs, labels = self.saved.probs, self.saved.labels
        N = probs.shape[0]
        d = probs.copy()
        d[np.arange(N), labels] -= 1
        d *= dloss / N
        return d


def log_softmax(scores):
    """Row-wise log softmax, stable: the row max is subtracted before exp."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(scores):
    """Row-wise softmax probabilities (the one softmax of minispp)."""
    return np.exp(log_softmax(scores))
