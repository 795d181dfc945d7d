"""When a fused Conv2D -> ReLU -> MaxPool2D step runs through Winograd F(2x2, 3x3)
(cnn._winograd) instead of im2col + GEMM, and its transformed filters.

Only at inference (no cache for a backward pass), on the compiled backend, for
3x3 stride-1 convolutions (pad 0-2, the same on both axes) followed by 2x2/2 max
pooling: each 2x2 output tile is then one pooling window, and the kernel's
epilogue writes one pooled value per tile. The layer must also have enough
channels and the batch enough images, because the transforms cost about as
much as the multiplies they save when there is little to multiply. Measured
with both paths alternated (Intel Xeon @ 2.80GHz, AVX-512, 2 cores, float32,
ms per call, im2col+relu+pool vs Winograd):

    (N, C, H, F)         1 thread           2 threads
    (64, 32, 14, 64)     7.28 vs 6.32       3.80 vs 3.56   convnet's conv2
    (64, 64, 7, 64)      5.08 vs 4.06       2.77 vs 2.30
    (64, 32, 28, 32)     19.6 vs 12.3       10.3 vs 7.08
    (1, 32, 14, 64)      0.223 vs 0.234     0.221 vs 0.226 one image: no gain
    (64, 1, 28, 32)      1.35 vs 2.90       1.31 vs 2.90   one channel: a loss

Hence MIN_CHANNELS and MIN_IMAGES. CNN_WINOGRAD=0 turns the path off (to
compare, or if a machine measures otherwise).

The filters' transform U is computed once and kept until the weights change
(cnn.derived). ``conv_relu_pool_inference`` is the one place that chooses
between this path and the fused im2col kernel, for ConvReLUMaxPool and for
ConvBatchNorm (cnn.folding) alike.
"""
import os

import numpy as np

MIN_CHANNELS = 16
MIN_IMAGES = 8


def enabled():
    return os.environ.get("CNN_WINOGRAD", "1").strip() != "0"


def fits(conv, pool, x_shape, ops):
    """Whether the fused step (conv, pool) on input x_shape takes the Winograd path:
    the layer fits it and the batch is large enough."""
    return (len(x_shape) == 4 and enough_images(x_shape[0])
            and layer_fits(conv, pool, x_shape[1:], ops))


def layer_fits(conv, pool, image_shape, ops):
    """Whether the fused step (conv, pool) on images of image_shape (C, H, W) takes
    the Winograd path for batches of enough images (cnn.plan decides this once)."""
    if not hasattr(ops, "winograd_conv2d_forward") or not enabled():
        return False
    (ph, pw) = conv.pad
    return (conv.kernel == (3, 3) and conv.stride == (1, 1) and ph == pw and ph <= 2
            and pool.kernel == (2, 2) and pool.stride == (2, 2)
            and len(image_shape) == 3 and image_shape[0] >= MIN_CHANNELS
            and image_shape[1] + 2 * ph >= 4 and image_shape[2] + 2 * pw >= 4)


def enough_images(n):
    """Whether a batch of n images is worth Winograd's transforms."""
    return n >= MIN_IMAGES


def conv_relu_pool_inference(conv, pool, x, w, b, filters):
    """relu(conv(x)) max-pooled as ``pool`` says, at inference, with the weights
    (w, b) (the layer's, or folded ones): through Winograd when ``fits``, its
    transformed filters kept in ``filters`` (a cnn.derived.Derived), else through
    the fused im2col kernel."""
    ops = conv.ops
    if fits(conv, pool, np.shape(x), ops):
        U = filters.get(lambda w: ops.winograd_filters(w, 2), w)
        return ops.winograd_conv2d_forward(x, U, b, conv.pad[0], m=2, pool=True,
                                           threads=conv.threads)
    out, _ = ops.conv2d_relu_maxpool2d_forward(x, w, b, conv.stride, conv.pad, pool.kernel,
                                               pool.stride, threads=conv.threads,
                                               need_cache=False)
    return out
