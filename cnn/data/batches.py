"""Minibatches of (x, y), in order or shuffled."""
import numbers
import operator

import numpy as np

from cnn.data._checks import _check_pair


def iterate_minibatches(x, y, batch_size, rng=None):
    """Iterate over ``(xb, yb)`` minibatches of ``x`` (N, ...) and ``y`` (N,).

    Items are in order, or shuffled by ``rng`` (a ``np.random.Generator``)
    when given; every item appears once and the last batch holds the
    remainder (N % batch_size items) when N is not a multiple of batch_size.
    Arguments are checked at the call, not at the first ``next``.
    """
    _check_pair(x, y, "x", "y")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got "
                        f"{type(rng).__name__}")
    return _minibatches(x, y, operator.index(batch_size), rng)


def _minibatches(x, y, batch_size, rng):
    n = x.shape[0]
    if rng is None:
        for i in range(0, n, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
