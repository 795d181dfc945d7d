"""Random shifts and horizontal flips of a batch (training-time augmentation)."""
import numbers
import operator

import numpy as np

from cnn.data._checks import _check_stat


def augment(batch, rng, shift=2, flip=True, fill=0.0):
    """Random shifts and horizontal flips of a batch, vectorised.

    batch (N, C, H, W) float (float32 in training). Each image is shifted by
    independent random integers in [-shift, shift] rows and columns, the
    uncovered border filled with ``fill`` (0, the background of [0, 1]
    pixels; pass ``Normalizer.background`` for normalised batches; a sequence
    gives one value per channel), and, when
    ``flip``, mirrored left-right with probability 0.5. ``rng`` is a
    ``np.random.Generator``. Returns a new array of the same shape and dtype;
    ``batch`` is not modified. With ``shift=0`` and ``flip=False`` it is a copy.
    """
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"batch must be a numpy array, got {type(batch).__name__}")
    if batch.ndim != 4:
        raise ValueError(f"batch must be 4-D (N, C, H, W), got shape {batch.shape}")
    if batch.dtype.kind != "f":
        raise TypeError(f"batch must be a float array, got dtype {batch.dtype}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral) or shift < 0:
        raise ValueError(f"shift must be an int >= 0, got {shift!r}")
    shift = operator.index(shift)
    N, C, H, W = batch.shape
    if isinstance(fill, (list, tuple, np.ndarray)):
        if len(fill) != C:
            raise ValueError(f"fill must be a number or one value per channel ({C}), got "
                             f"{fill!r}")
        fill = np.array([_check_stat(f, "fill") for f in fill]).reshape(1, C, 1, 1)
    else:
        fill = _check_stat(fill, "fill")
    if N == 0 or (shift == 0 and not flip):
        return batch.copy()

    rows = np.arange(H)
    cols = np.broadcast_to(np.arange(W), (N, W))
    if flip:
        mirrored = rng.random(N) < 0.5
        cols = np.where(mirrored[:, None], W - 1 - cols, cols)
    if shift == 0:
        out = batch.copy()
        out[mirrored] = batch[mirrored][..., ::-1]
        return out

    # out[n, c, i, j] = batch[n, c, i - dy[n], j' - dx[n]] (j' = j or W-1-j),
    # read from a copy padded by `shift` filled with `fill`.
    d = rng.integers(-shift, shift + 1, size=(2, N))
    dy, dx = d[0], d[1]
    Hp, Wp = H + 2 * shift, W + 2 * shift
    padded = np.empty((N, C, Hp, Wp), dtype=batch.dtype)
    padded[...] = fill
    padded[:, :, shift:shift + H, shift:shift + W] = batch
    r = (shift - dy)[:, None] + rows[None, :]          # (N, H)
    c = (shift - dx)[:, None] + cols                   # (N, W)
    idx = (np.arange(N * C).reshape(N, C, 1, 1) * (Hp * Wp)
           + r[:, None, :, None] * Wp + c[:, None, None, :])
    return padded.reshape(-1)[idx]
