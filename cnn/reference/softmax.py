"""softmax + cross-entropy in NumPy: vectorised over the batch, and row by row.

For row i with label y and m = max_k z[i, k] (subtracted so that exp never
overflows and the loss never takes log(0)):

    lse_i  = log sum_k exp(z[i, k] - m)
    loss   = (1/N) sum_i (lse_i - (z[i, y] - m))          = mean of -log p[i, y]
    dlogits[i, k] = (p[i, k] - [k == y]) / N,   p[i, k] = exp(z[i, k] - m - lse_i)
"""
import math

import numpy as np

from cnn._checks import check_softmax_cross_entropy


def softmax_cross_entropy(logits, labels, *, threads=None):
    """logits (N, K), labels (N,) ints in [0, K) -> (loss as a float, dlogits (N, K))."""
    logits, labels = check_softmax_cross_entropy(logits, labels)
    N = logits.shape[0]
    rows = np.arange(N)
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - lse
    loss = -np.sum(logp[rows, labels], dtype=np.float64) / N
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= 1
    dlogits /= N
    return float(loss), dlogits


def softmax_cross_entropy_naive(logits, labels, *, threads=None):
    """The formula one row at a time."""
    logits, labels = check_softmax_cross_entropy(logits, labels)
    N = logits.shape[0]
    dlogits = np.empty_like(logits)
    loss = 0.0
    for i in range(N):
        z, y = logits[i], labels[i]
        shifted = z - z.max()
        e = np.exp(shifted)
        s = e.sum()
        loss += math.log(s) - float(shifted[y])
        dlogits[i] = e / s
        dlogits[i, y] -= 1
        dlogits[i] /= N
    return loss / N, dlogits
