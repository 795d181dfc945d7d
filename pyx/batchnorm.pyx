"""batchnorm2d forward and backward: spatial batch norm, parallel over channels.

Layout: NCHW, C-contiguous, viewed as (N, C, P) with P = H*W. Channel c holds
m = N*P values: N contiguous runs of P elements, C*P elements apart. Per channel

    mean = sum x / m,   var = sum (x - mean)^2 / m (biased),   inv_std = 1/sqrt(var + eps)
    xhat = (x - mean) * inv_std,   out = gamma * xhat + beta

Training mode normalises with the batch statistics and updates the running ones
in place, running = (1 - momentum) * running + momentum * stat, the variance
with the unbiased m/(m-1) correction (biased when m == 1), as PyTorch. Eval mode
uses running_mean / running_var and updates nothing. Backward (both modes)
dbeta = sum dout, dgamma = sum dout * xhat, and

    training: dx = gamma * inv_std / m * (m * dout - sum dout - xhat * sum dout * xhat)
    eval:     dx = dout * gamma * inv_std          (the statistics are constants)

Parallel axis: channels. One thread owns channel c from start to end: it sums
the channel, writes out[:, c], mean[c], inv_std[c], running_mean[c] and
running_var[c] (in backward dx[:, c], dgamma[c] and dbeta[c]), so no two
threads write the same element and no reduction crosses threads. Each channel
is summed in the same order whatever the thread count, so the results are
bit-for-bit independent of ``threads``. Fewer channels than threads: C threads.

Precision: every sum and per-channel quantity is a double, also for float32
inputs, and the variance takes two passes (sum of (x - mean)^2) rather than
E[x^2] - mean^2, which cancels catastrophically when |mean| >> std.

Cache: (x, gamma, mean, inv_std, training), mean and inv_std float64 (C,).
xhat is recomputed from x in backward (one subtract and multiply per element)
instead of being stored, which also keeps it in double for float32 inputs.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from cnn._checks import check_batchnorm2d, check_batchnorm2d_cache, check_dout
from cnn._threads import threads_for


cdef void channel_moments(const floating* x, Py_ssize_t N, Py_ssize_t P, Py_ssize_t stride,
                          double* mean, double* var) noexcept nogil:
    """Mean and biased variance of one channel (N runs of P values, stride apart)."""
    cdef Py_ssize_t n, p
    cdef const floating* row
    cdef double acc = 0.0, d, mu
    for n in range(N):
        row = x + n * stride
        for p in range(P):
            acc += row[p]
    mu = acc / <double>(N * P)
    acc = 0.0
    for n in range(N):
        row = x + n * stride
        for p in range(P):
            d = row[p] - mu
            acc += d * d
    mean[0] = mu
    var[0] = acc / <double>(N * P)


cdef void channel_normalize(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t P,
                            Py_ssize_t stride, double mean, double scale,
                            double shift) noexcept nogil:
    """out = (x - mean) * scale + shift over one channel (scale = gamma * inv_std)."""
    cdef Py_ssize_t n, p
    cdef const floating* row
    cdef floating* orow
    for n in range(N):
        row = x + n * stride
        orow = out + n * stride
        for p in range(P):
            orow[p] = <floating>((row[p] - mean) * scale + shift)


cdef void channel_backward(const floating* x, const floating* dout, floating* dx,
                           Py_ssize_t N, Py_ssize_t P, Py_ssize_t stride, double gamma,
                           double mean, double inv_std, bint training,
                           floating* dgamma, floating* dbeta) noexcept nogil:
    """dx over one channel, and the channel's dgamma and dbeta."""
    cdef Py_ssize_t n, p
    cdef const floating* row
    cdef const floating* drow
    cdef floating* dxrow
    cdef double sum_d = 0.0, sum_dxmu = 0.0, d, scale, shift, slope, m = <double>(N * P)
    for n in range(N):
        row = x + n * stride
        drow = dout + n * stride
        for p in range(P):
            d = drow[p]
            sum_d += d
            sum_dxmu += d * (row[p] - mean)
    # sum(dout * xhat) = inv_std * sum(dout * (x - mean))
    dbeta[0] = <floating>sum_d
    dgamma[0] = <floating>(sum_dxmu * inv_std)
    scale = gamma * inv_std
    if training:
        # dx = scale * (dout - sum_d/m - xhat * sum(dout*xhat)/m)
        #    = scale * dout - scale * sum_d/m - (x - mean) * scale * inv_std^2 * sum_dxmu/m
        shift = scale * sum_d / m
        slope = scale * inv_std * inv_std * sum_dxmu / m
        for n in range(N):
            row = x + n * stride
            drow = dout + n * stride
            dxrow = dx + n * stride
            for p in range(P):
                dxrow[p] = <floating>(scale * drow[p] - shift - (row[p] - mean) * slope)
    else:
        for n in range(N):
            drow = dout + n * stride
            dxrow = dx + n * stride
            for p in range(P):
                dxrow[p] = <floating>(scale * drow[p])


cdef void batchnorm2d_forward_kernel(const floating[:, :, ::1] x, const floating[::1] gamma,
                                     const floating[::1] beta, floating[::1] running_mean,
                                     floating[::1] running_var, floating[:, :, ::1] out,
                                     double[::1] mean, double[::1] var, double[::1] inv_std,
                                     bint training, double momentum, double eps,
                                     int loop_threads) noexcept nogil:
    """out (N, C, P), mean/var/inv_std (C,); running stats updated when training."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t m = N * P
    cdef Py_ssize_t c
    cdef double unbiased, scale
    for c in prange(C, num_threads=loop_threads, schedule="static"):
        if training:
            channel_moments(&x[0, c, 0], N, P, C * P, &mean[c], &var[c])
            if m > 1:
                unbiased = var[c] * (<double>m / <double>(m - 1))
            else:
                unbiased = var[c]
            running_mean[c] = <floating>((1.0 - momentum) * running_mean[c]
                                         + momentum * mean[c])
            running_var[c] = <floating>((1.0 - momentum) * running_var[c]
                                        + momentum * unbiased)
        else:
            mean[c] = running_mean[c]
            var[c] = running_var[c]
        inv_std[c] = 1.0 / sqrt(var[c] + eps)
        scale = gamma[c] * inv_std[c]
        channel_normalize(&x[0, c, 0], &out[0, c, 0], N, P, C * P, mean[c], scale, beta[c])


cdef void batchnorm2d_backward_kernel(const floating[:, :, ::1] x, const floating[::1] gamma,
                                      const double[::1] mean, const double[::1] inv_std,
                                      const floating[:, :, ::1] dout, floating[:, :, ::1] dx,
                                      floating[::1] dgamma, floating[::1] dbeta,
                                      bint training, int loop_threads) noexcept nogil:
    """dx (N, C, P), dgamma and dbeta (C,), one channel per iteration."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c
    for c in prange(C, num_threads=loop_threads, schedule="static"):
        channel_backward(&x[0, c, 0], &dout[0, c, 0], &dx[0, c, 0], N, P, C * P, gamma[c],
                         mean[c], inv_std[c], training, &dgamma[c], &dbeta[c])


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, *, training=True,
                        momentum=0.1, eps=1e-5, threads=None):
    """Spatial batch normalisation forward.

    x (N, C, H, W); gamma, beta, running_mean, running_var (C,), all of x's
    dtype. Training mode normalises with the batch statistics over N, H, W and
    updates running_mean / running_var in place (unbiased variance); eval mode
    (training=False) normalises with them. Returns out (N, C, H, W) and a cache
    for batchnorm2d_backward.
    """
    x, gamma, beta, momentum, eps = check_batchnorm2d(x, gamma, beta, running_mean,
                                                      running_var, momentum, eps)
    training = bool(training)
    N, C, H, W = x.shape
    loop_threads = min(threads_for(threads, x.size), C)
    out = np.empty_like(x)
    mean = np.empty(C, dtype=np.float64)
    var = np.empty(C, dtype=np.float64)
    inv_std = np.empty(C, dtype=np.float64)
    x3 = x.reshape(N, C, H * W)
    out3 = out.reshape(N, C, H * W)
    if x.dtype == np.float32:
        batchnorm2d_forward_kernel[float](x3, gamma, beta, running_mean, running_var, out3,
                                          mean, var, inv_std, training, momentum, eps,
                                          loop_threads)
    else:
        batchnorm2d_forward_kernel[double](x3, gamma, beta, running_mean, running_var, out3,
                                           mean, var, inv_std, training, momentum, eps,
                                           loop_threads)
    return out, (x, gamma, mean, inv_std, training)


def batchnorm2d_backward(dout, cache, *, threads=None):
    """Gradients of batchnorm2d_forward: (dx, dgamma, dbeta) shaped like (x, gamma, beta)."""
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    x, gamma, mean, inv_std, training = check_batchnorm2d_cache(cache)
    N, C, H, W = x.shape
    dout = check_dout(dout, x.shape, x.dtype)
    loop_threads = min(threads_for(threads, x.size), C)
    dx = np.empty_like(x)
    dgamma = np.empty(C, dtype=x.dtype)
    dbeta = np.empty(C, dtype=x.dtype)
    x3 = x.reshape(N, C, H * W)
    d3 = dout.reshape(N, C, H * W)
    dx3 = dx.reshape(N, C, H * W)
    if x.dtype == np.float32:
        batchnorm2d_backward_kernel[float](x3, gamma, mean, inv_std, d3, dx3, dgamma, dbeta,
                                           training, loop_threads)
    else:
        batchnorm2d_backward_kernel[double](x3, gamma, mean, inv_std, d3, dx3, dgamma, dbeta,
                                            training, loop_threads)
    return dx, dgamma, dbeta
