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

    def __init__(self, name=None):
        super().__init__(name)
        self.probs = None

    def infer_shape(self, in_shape):
        return ()

    def forward(self, scores, labels, train=True):
        scores = self.accept(scores)
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
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_z
        self.probs = np.exp(log_probs)
        self.labels = labels.astype(np.int64)
        return float(-log_probs[np.arange(N), self.labels].mean())

    def backward(self, dloss=1.0):
        self.require_forward("probs")
        N = self.probs.shape[0]
        d = self.probs.copy()
        d[np.arange(N), self.labels] -= 1
        d *= dloss / N
        return d
