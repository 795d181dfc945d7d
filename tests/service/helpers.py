"""Images for the service tests."""
import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(array):
    """A grayscale PNG of a uint8 (H, W) array."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(array, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bilevel_png(width, height):
    """A valid all-black 1-bit PNG of any size (a 10000x10000 one is ~12 KB)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def npy_batch(n=1, dtype=np.uint8, fill=0):
    """The bytes of np.save of an (n, 28, 28) batch: an application/x-npy body."""
    buf = io.BytesIO()
    np.save(buf, np.full((n, 28, 28), fill, dtype))
    return buf.getvalue()


def save_colour_model(folder, name, size, class_names, normalization=None):
    """A random-weight 3-channel model of ``size`` (H, W) saved as folder/name.npz
    (the folder is made); returns the model."""
    from cnn.architectures import build_architecture
    from cnn.io import save_model
    folder.mkdir(parents=True, exist_ok=True)
    model = build_architecture(f"conv4k3p1-relu-maxpool2-flatten-dense{len(class_names)}",
                               len(class_names), (3, *size), class_names=class_names)
    model.build(seed=0)
    model.normalization = normalization
    save_model(folder / f"{name}.npz", model)
    return model


def random_images(n, seed=0, size=(28, 28)):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)
