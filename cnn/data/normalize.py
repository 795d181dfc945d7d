"""Normalizer: per-dataset pixel normalisation, fitted on the training pixels."""
import numpy as np

from cnn.data._checks import _check_stat
from cnn.data.idx import _CHUNK


def _check_pixels(x, name="x", channels=1):
    """x (N, H, W) or (N, C, H, W), uint8 0-255 or float 0-1 -> (N, C, H, W) view.

    ``channels`` None accepts any C; (N, H, W) is one channel."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim == 3 and channels in (1, None):
        x = x[:, None]
    elif not (x.ndim == 4 and channels in (x.shape[1], None)):
        want = "(N, H, W) or (N, 1, H, W)" if channels in (1, None) else \
            f"(N, {channels}, H, W)"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be uint8 pixels 0-255 or float pixels 0-1, got "
                         f"dtype {x.dtype}")
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            hint = " (divide by 255, or pass the uint8 images)" if hi > 1.0 else ""
            raise ValueError(f"{name} holds float pixels outside [0, 1]: found values in "
                             f"[{lo}, {hi}]{hint}")
    return x


class Normalizer:
    """Per-dataset pixel normalisation: ``(pixel / 255 - mean) / std``.

    ``mean`` and ``std`` are of the training pixels scaled to [0, 1]
    (:meth:`fit`): floats for grayscale, one per channel (tuples) for colour.
    Calling it maps images (N, H, W) or (N, C, H, W), uint8 0-255 or float
    0-1, to float32 (N, C, H, W).
    """

    def __init__(self, mean, std):
        if isinstance(mean, (list, tuple, np.ndarray)) or \
                isinstance(std, (list, tuple, np.ndarray)):
            mean, std = list(np.ravel(mean)), list(np.ravel(std))
            if len(mean) != len(std) or not mean:
                raise ValueError(f"mean and std must have one value per channel, got "
                                 f"{mean!r} and {std!r}")
            if len(mean) > 1:
                self.mean = tuple(_check_stat(m, "mean") for m in mean)
                self.std = tuple(_check_stat(v, "std", positive=True) for v in std)
                return
            mean, std = mean[0], std[0]
        self.mean = _check_stat(mean, "mean")
        self.std = _check_stat(std, "std", positive=True)

    @property
    def channels(self):
        return len(self.mean) if isinstance(self.mean, tuple) else 1

    @classmethod
    def fit(cls, images):
        """Mean and std of every pixel of ``images`` (N, H, W) or (N, 1, H, W),
        uint8 0-255 or float 0-1, on the [0, 1] scale; of each channel for
        (N, C, H, W) with C > 1.

        uint8 images are counted exactly (a histogram, in chunks) with no
        float copy of the whole set.
        """
        x = _check_pixels(images, "images", channels=None)
        if x.shape[1] > 1:
            stats = [cls.fit(x[:, c]) for c in range(x.shape[1])]
            return cls([n.mean for n in stats], [n.std for n in stats])
        if x.size == 0:
            raise ValueError(f"images must not be empty, got shape {images.shape}")
        flat = x.reshape(-1)
        n = flat.size
        if x.dtype == np.uint8:
            hist = np.zeros(256, np.int64)
            for i in range(0, n, _CHUNK):
                hist += np.bincount(flat[i:i + _CHUNK], minlength=256)
            v = np.arange(256, dtype=object)
            h = hist.astype(object)
            s, ss = int((h * v).sum()), int((h * v * v).sum())
            mean = s / (255.0 * n)
            var = (n * ss - s * s) / (float(n) * n * 255.0 * 255.0)  # exact numerator
        else:
            s = ss = 0.0
            for i in range(0, n, _CHUNK):
                c = flat[i:i + _CHUNK].astype(np.float64)
                s += float(c.sum())
            mean = s / n
            for i in range(0, n, _CHUNK):
                c = flat[i:i + _CHUNK].astype(np.float64) - mean
                ss += float(np.dot(c, c))
            var = ss / n
        std = float(np.sqrt(max(var, 0.0)))
        if not std > 1e-12:
            raise ValueError(f"images must not all be the same value: std of the pixels "
                             f"is {std}, cannot normalise")
        return cls(mean, std)

    @property
    def background(self):
        """What a 0 pixel (the background) becomes: ``-mean / std`` (per channel
        for colour)."""
        if self.channels > 1:
            return tuple(-m / s for m, s in zip(self.mean, self.std))
        return -self.mean / self.std

    def __call__(self, x):
        """x (N, H, W) or (N, C, H, W), uint8 0-255 or float 0-1 -> float32 (N, C, H, W)."""
        x = _check_pixels(x, "x", channels=self.channels)
        if self.channels > 1:
            mean = np.array(self.mean).reshape(1, -1, 1, 1)
            std = np.array(self.std).reshape(1, -1, 1, 1)
            if x.dtype == np.uint8:      # one lookup table per channel
                lut = ((np.arange(256) / 255.0 - mean.reshape(-1, 1)) / std.reshape(-1, 1)
                       ).astype(np.float32)                     # (C, 256)
                return lut[np.arange(self.channels).reshape(1, -1, 1, 1), x]
            return ((x.astype(np.float64) - mean) / std).astype(np.float32)
        if x.dtype == np.uint8:
            lut = ((np.arange(256) / 255.0 - self.mean) / self.std).astype(np.float32)
            return lut[x]
        dt = np.float32 if x.dtype.itemsize <= 4 else np.float64
        out = (x.astype(dt) - dt(self.mean)) / dt(self.std)
        return out.astype(np.float32, copy=False)

    def to_dict(self):
        """``{"mean": float, "std": float}`` (plain floats, e.g. for the weights file);
        lists of one float per channel for colour."""
        if self.channels > 1:
            return {"mean": [float(m) for m in self.mean], "std": [float(v) for v in self.std]}
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise ValueError(f"d must be a dict with keys 'mean' and 'std', got {d!r}")
        return cls(d["mean"], d["std"])

    def __eq__(self, other):
        if not isinstance(other, Normalizer):
            return NotImplemented
        return self.mean == other.mean and self.std == other.std

    def __repr__(self):
        return f"Normalizer(mean={self.mean!r}, std={self.std!r})"
