"""A seeded train/validation split of (images, labels)."""
import numbers

import numpy as np

from cnn.data._checks import _check_pair


def train_val_split(images, labels, val_fraction=0.1, seed=0):
    """Shuffle with ``seed`` then split off ``val_fraction`` of the items.

    images (N, ...), labels (N,). Returns ``(train_x, train_y, val_x, val_y)``
    with ``round(N * val_fraction)`` validation items (at most N - 1, so the
    training part is never empty when N > 0); ``val_fraction`` 0 gives empty
    validation arrays. The same seed always gives the same split, and the two
    parts are disjoint and together hold every item once.
    """
    _check_pair(images, labels)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    n = images.shape[0]
    n_val = min(int(round(n * float(val_fraction))), max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]
