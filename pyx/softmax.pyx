"""softmax + cross-entropy loss and its gradient, fused, parallel over rows.

Layout: logits (N, K) row-major, one row of class scores per sample; labels
(N,) int64 in [0, K). For row i with label y, m = max_k z[i, k] and

    s      = sum_k exp(z[i, k] - m)               every term <= 1, one term == 1
    lse    = log(s)                                so 1 <= s <= K: no overflow, no log(0)
    loss_i = -log p[i, y] = lse - (z[i, y] - m)
    loss   = (1/N) sum_i loss_i
    dlogits[i, k] = (p[i, k] - [k == y]) / N,     p[i, k] = exp(z[i, k] - m) / s

Subtracting the row max is what keeps huge logits finite: exp only ever sees
arguments <= 0, and the loss is built from log-sum-exp rather than log(p),
which would be log(0) = -inf for a label whose probability underflows. The
exponentials, s and the loss are computed in double whatever the input dtype;
dlogits is rounded to the logits' dtype at the end.

Parallel axis: rows (samples). Each iteration reads row i of logits and
writes only row i of dlogits, so the gradient writes are disjoint per thread.
Each row's arithmetic is identical whatever the thread count, so dlogits does
not depend on ``threads``.

The loss is the one cross-row quantity. It is accumulated with ``loss += ...``
inside the prange body, which Cython compiles to an OpenMP reduction
(``reduction(+:loss)``): every thread sums its rows into its own private copy
of ``loss``, initialised to 0, and OpenMP adds the private copies into the
shared variable once, after the loop, so no two threads ever write the same
memory. The per-row temporaries (max, s, pointers) are assigned inside the
loop and so are thread-private, and the inner running sum is written
``s = s + e`` on purpose: an in-place ``s += e`` would make Cython treat s as
a second reduction of the prange. The threads' partial sums are added in an
order that depends on the thread count, so the loss may differ between thread
counts in its last bits, never more.
"""
import numpy as np

from cython.parallel cimport prange
from libc.math cimport exp, log
from libc.stdint cimport int64_t
from cython cimport floating

from cnn._checks import check_softmax_cross_entropy
from cnn._threads import threads_for


cdef double softmax_cross_entropy_kernel(const floating[:, ::1] logits,
                                         const int64_t[::1] labels,
                                         floating[:, ::1] dlogits,
                                         int loop_threads) noexcept nogil:
    """Fill dlogits (N, K) = (softmax - onehot) / N; return the summed loss in double."""
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1]
    cdef Py_ssize_t i, k, y
    cdef double inv_n = 1.0 / <double>N
    cdef double loss = 0.0
    cdef double mx, s, e, lse, zy, scale
    cdef const floating* row
    cdef floating* drow
    for i in prange(N, num_threads=loop_threads, schedule="static"):
        row = &logits[i, 0]
        drow = &dlogits[i, 0]
        mx = row[0]
        for k in range(1, K):
            if row[k] > mx:
                mx = row[k]
        # Unnormalised probabilities go into dlogits first, so exp runs once per entry.
        s = 0.0
        for k in range(K):
            e = exp(<double>row[k] - mx)
            drow[k] = <floating>e
            s = s + e
        lse = log(s)
        y = <Py_ssize_t>labels[i]
        zy = <double>row[y] - mx
        loss += lse - zy
        scale = inv_n / s
        for k in range(K):
            drow[k] = <floating>(<double>drow[k] * scale)
        # The label's entry from p_y in double: p_y - 1 cancels, so avoid rounding p_y first.
        drow[y] = <floating>((exp(zy - lse) - 1.0) * inv_n)
    return loss


def softmax_cross_entropy(logits, labels, *, threads=None):
    """Mean cross-entropy of softmax(logits) against integer labels.

    logits (N, K) float32/float64, labels (N,) integers in [0, K). Returns
    (loss, dlogits): loss a Python float, the batch mean of -log p[label];
    dlogits (N, K) of logits' dtype, the gradient of loss with respect to logits.
    """
    logits, labels = check_softmax_cross_entropy(logits, labels)
    N = logits.shape[0]
    loop_threads = min(threads_for(threads, logits.size), N)
    dlogits = np.empty_like(logits)
    if logits.dtype == np.float32:
        total = softmax_cross_entropy_kernel[float](logits, labels, dlogits, loop_threads)
    else:
        total = softmax_cross_entropy_kernel[double](logits, labels, dlogits, loop_threads)
    return float(total / N), dlogits
