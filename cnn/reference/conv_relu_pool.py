"""conv2d -> relu -> maxpool2d as one op, composed from the three (CS231n's
``conv_relu_pool_forward``): the reference the fused Cython kernel must match.

    out = maxpool2d(relu(conv2d(x, w, b, stride, pad)), pool_kernel, pool_stride)

x (N, C, H, W), w (F, C, KH, KW), b (F,) -> out (N, F, Hp, Wp); the cache is
the three ops' caches, None with need_cache=False (inference). Backward runs
the three backwards in reverse and returns (dx, dw, db).
"""
from cnn._checks import check_conv_relu_pool
from cnn.reference import conv, pool, relu


def _compose(conv_forward, conv_backward, relu_forward, relu_backward, pool_forward,
             pool_backward):
    def forward(x, w, b, stride=1, pad=0, pool_kernel=2, pool_stride=None, *, threads=None,
                need_cache=True):
        # Validated as a whole first, so errors name the fused op's arguments.
        check_conv_relu_pool(x, w, b, stride, pad, pool_kernel, pool_stride)
        c, conv_cache = conv_forward(x, w, b, stride, pad)
        r, relu_cache = relu_forward(c)
        out, pool_cache = pool_forward(r, pool_kernel, pool_stride)
        return out, ((conv_cache, relu_cache, pool_cache) if need_cache else None)

    def backward(dout, cache, *, threads=None, need_dx=True):
        if cache is None:
            raise ValueError("no cache: the forward pass ran with need_cache=False (inference)")
        conv_cache, relu_cache, pool_cache = cache
        dr = pool_backward(dout, pool_cache)
        dc = relu_backward(dr, relu_cache)
        return conv_backward(dc, conv_cache, need_dx=need_dx)

    return forward, backward


conv2d_relu_maxpool2d_forward, conv2d_relu_maxpool2d_backward = _compose(
    conv.conv2d_forward, conv.conv2d_backward, relu.relu_forward, relu.relu_backward,
    pool.maxpool2d_forward, pool.maxpool2d_backward)
conv2d_relu_maxpool2d_forward_naive, conv2d_relu_maxpool2d_backward_naive = _compose(
    conv.conv2d_forward_naive, conv.conv2d_backward_naive, relu.relu_forward_naive,
    relu.relu_backward_naive, pool.maxpool2d_forward_naive, pool.maxpool2d_backward_naive)
