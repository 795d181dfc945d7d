"""Argument checks shared by the preparation steps (split, batches, normalise, augment)."""
import numbers

import numpy as np


def _check_pair(x, y, xname="images", yname="labels"):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{xname} must be a numpy array, got {type(x).__name__}")
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{yname} must be a numpy array, got {type(y).__name__}")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{xname} and {yname} must have the same number of items, got "
                         f"shapes {x.shape} and {y.shape}")


def _check_stat(value, name, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or (positive and not value > 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value)
