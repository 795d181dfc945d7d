"""Winograd convolution F(m x m, 3 x 3) in NumPy: the twin of cnn._winograd.

A 3x3 stride-1 convolution computes each m x m block of outputs from an
(m+2) x (m+2) tile of input. Winograd's minimal filtering (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015) does it with (m+2)^2
multiplies per (filter, channel) pair instead of 9 m^2:

    U = G g G^T          each filter's 3x3 kernel g -> (m+2) x (m+2)   (once per model)
    V = B^T d B          each input tile d          -> (m+2) x (m+2)
    M = sum_c U * V      elementwise, summed over channels: for each of the
                         (m+2)^2 positions one GEMM (F, C) @ (C, tiles)
    Y = A^T M A          -> the m x m outputs of the tile

F(2x2, 3x3) needs 16 multiplies for 4 outputs (2.25x fewer than 36), F(4x4,
3x3) 36 for 16 (4x fewer). The price is rounding: the transforms add and
subtract values of different sizes, so float32 results differ from the direct
sum by more than the direct sum's own rounding. Measured on random N(0, 1)
data against the float64 direct convolution, relative to the largest output,
up to 64 channels: up to 4e-7 for F(2, 3) and 5e-6 for F(4, 3) in float32,
1e-14 in float64 (tests/kernels/test_winograd.py holds 1e-6, 2e-5 and 1e-12).

The input gradient of a stride-1 convolution is itself a stride-1
convolution: of dout, padded by 2 - pad, with the kernels rotated by 180
degrees and the filter and channel axes swapped. So the same three stages
compute it (``winograd_conv2d_input_grad``); the weight gradient stays im2col
+ GEMM (cnn.reference.conv).
"""
import numpy as np

# (B^T, G, A^T) for each output tile size m, from Lavin & Gray. Tile size
# alpha = m + 2: B^T is (alpha, alpha), G (alpha, 3), A^T (m, alpha).
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], dtype=np.float64),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], dtype=np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], dtype=np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], dtype=np.float64)),
}


def _check(x, w, pad, m):
    if m not in TRANSFORMS:
        raise ValueError(f"m must be one of {sorted(TRANSFORMS)} (F(m x m, 3 x 3)), got {m!r}")
    if x.ndim != 4 or w.ndim != 4 or w.shape[2:] != (3, 3) or x.shape[1] != w.shape[1]:
        raise ValueError(f"Winograd needs x (N, C, H, W) and w (F, C, 3, 3), got "
                         f"{x.shape} and {w.shape}")
    if not 0 <= pad <= 2:
        raise ValueError(f"pad must be 0, 1 or 2 for a 3x3 kernel, got {pad!r}")
    if x.shape[2] + 2 * pad < 3 or x.shape[3] + 2 * pad < 3:
        raise ValueError(f"the padded input {x.shape[2:]} (pad {pad}) is smaller than 3x3")


def filter_transform(w, m):
    """w (F, C, 3, 3) -> U (alpha^2, F, C): G g G^T of every kernel, positions first."""
    _, G, _ = TRANSFORMS[m]
    # in float64, rounded once to w's dtype (1/6 and 1/24 are not exact in float32)
    U = np.einsum("ak,fckl,bl->abfc", G, w.astype(np.float64), G)
    alpha = m + 2
    return np.ascontiguousarray(U.reshape(alpha * alpha, *w.shape[:2]), dtype=w.dtype)


def input_tiles(x, pad, m):
    """x (N, C, H, W) -> (tiles (N, C, tH, tW, alpha, alpha), (Ho, Wo)): the
    overlapping tiles of the zero-padded input, step m, the last ones padded
    with zeros past the input so every output has a tile."""
    N, C, H, W = x.shape
    alpha = m + 2
    Ho, Wo = H + 2 * pad - 2, W + 2 * pad - 2
    tH, tW = -(-Ho // m), -(-Wo // m)
    xp = np.zeros((N, C, tH * m + 2, tW * m + 2), dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    s = xp.strides
    tiles = np.lib.stride_tricks.as_strided(
        xp, (N, C, tH, tW, alpha, alpha), (s[0], s[1], m * s[2], m * s[3], s[2], s[3]),
        writeable=False)
    return tiles, (Ho, Wo)


def winograd_conv2d(x, w, b=None, pad=1, m=2, U=None):
    """3x3 stride-1 convolution (cross-correlation, as cnn.reference.conv).

    x (N, C, H, W), w (F, C, 3, 3), b (F,) or None, pad 0-2, m the output tile
    (2 or 4); U: ``filter_transform(w, m)`` when it is already computed (a model
    computes it once). Returns out (N, F, H + 2*pad - 2, W + 2*pad - 2).
    """
    _check(x, w, pad, m)
    BT, _, AT = (t.astype(x.dtype) for t in TRANSFORMS[m])
    alpha = m + 2
    N, C = x.shape[:2]
    F = w.shape[0]
    if U is None:
        U = filter_transform(w, m)
    tiles, (Ho, Wo) = input_tiles(x, pad, m)
    tH, tW = tiles.shape[2:4]
    V = np.einsum("ai,nctuij,bj->abcntu", BT, tiles, BT)          # B^T d B
    V = V.reshape(alpha * alpha, C, N * tH * tW)
    M = np.matmul(U, V).reshape(alpha, alpha, F, N, tH, tW)       # (alpha^2) GEMMs
    Y = np.einsum("ia,abfntu,jb->nftiuj", AT, M, AT)               # A^T M A
    out = Y.reshape(N, F, tH * m, tW * m)[:, :, :Ho, :Wo]
    if b is not None:
        out = out + b.reshape(1, F, 1, 1)
    return np.ascontiguousarray(out)


def rotated_filters(w):
    """w (F, C, 3, 3) -> (C, F, 3, 3) turned by 180 degrees: the kernels of the
    input gradient."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def winograd_conv2d_input_grad(dout, w, pad=1, m=2):
    """dx (N, C, H, W) of a 3x3 stride-1 convolution with ``pad``, from dout (N,
    F, H + 2*pad - 2, W + 2*pad - 2): the full correlation of dout with the
    rotated kernels, as a convolution with pad 2 - pad."""
    return winograd_conv2d(dout, rotated_filters(w), None, 2 - pad, m)
