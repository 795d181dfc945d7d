"""Spatial batch normalisation in NumPy: vectorised and the per-channel loop.

Per channel c the statistics run over the m = N*H*W values x[:, c, :, :]:

    mean[c] = sum x / m,   var[c] = sum (x - mean[c])^2 / m      (biased)
    xhat    = (x - mean[c]) * inv_std[c],   inv_std[c] = 1 / sqrt(var[c] + eps)
    out     = gamma[c] * xhat + beta[c]

Training mode normalises with the batch statistics and updates the running
ones in place, running = (1 - momentum) * running + momentum * stat, with the
unbiased variance var * m / (m - 1) (the biased one when m == 1), as PyTorch.
Eval mode normalises with running_mean / running_var and updates nothing.

Gradients (dbeta and dgamma in both modes):

    dbeta[c]  = sum dout,   dgamma[c] = sum dout * xhat
    training: dx = gamma * inv_std / m * (m * dout - sum dout - xhat * sum dout * xhat)
    eval:     dx = dout * gamma * inv_std        (the statistics are constants)

Statistics and sums are computed in float64 also for float32 inputs, as the
compiled kernels do; outputs are cast back to x's dtype. The cache is
(x, gamma, mean, inv_std, training) with mean and inv_std float64 (C,): xhat is
recomputed from x in backward instead of being stored.
"""
import numpy as np

from cnn._checks import check_batchnorm2d, check_batchnorm2d_cache, check_dout


def _update_running(running, momentum, stat):
    # In float64, then cast into the caller's array (which must stay the same object).
    running[...] = (1.0 - momentum) * running.astype(np.float64) + momentum * stat


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, *, training=True,
                        momentum=0.1, eps=1e-5, threads=None):
    """x (N, C, H, W); gamma, beta, running_mean, running_var (C,) -> out, cache."""
    x, gamma, beta, momentum, eps = check_batchnorm2d(x, gamma, beta, running_mean,
                                                      running_var, momentum, eps)
    training = bool(training)
    N, C, H, W = x.shape
    m = N * H * W
    if training:
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        var = x.var(axis=(0, 2, 3), dtype=np.float64)
        _update_running(running_mean, momentum, mean)
        _update_running(running_var, momentum, var * (m / (m - 1)) if m > 1 else var)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = (gamma * inv_std)[:, None, None]
    out = (x - mean[:, None, None]) * scale + beta[:, None, None]
    return out.astype(x.dtype), (x, gamma, mean, inv_std, training)


def batchnorm2d_backward(dout, cache, *, threads=None):
    """dout (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    x, gamma, mean, inv_std, training = check_batchnorm2d_cache(cache)
    dout = check_dout(dout, x.shape, x.dtype)
    N, C, H, W = x.shape
    m = N * H * W
    xhat = (x - mean[:, None, None]) * inv_std[:, None, None]     # float64
    dbeta = dout.sum(axis=(0, 2, 3), dtype=np.float64)
    dgamma = np.einsum("nchw,nchw->c", dout, xhat, dtype=np.float64)
    scale = (gamma * inv_std)[:, None, None]
    if training:
        dx = scale * (dout - dbeta[:, None, None] / m - xhat * (dgamma / m)[:, None, None])
    else:
        dx = scale * dout
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def batchnorm2d_forward_naive(x, gamma, beta, running_mean, running_var, *, training=True,
                              momentum=0.1, eps=1e-5, threads=None):
    """One channel at a time, the formulas written out step by step."""
    x, gamma, beta, momentum, eps = check_batchnorm2d(x, gamma, beta, running_mean,
                                                      running_var, momentum, eps)
    training = bool(training)
    N, C, H, W = x.shape
    m = N * H * W
    out = np.empty_like(x)
    mean = np.empty(C)
    inv_std = np.empty(C)
    for c in range(C):
        xc = x[:, c].astype(np.float64)
        if training:
            mu = np.sum(xc) / m
            var = np.sum((xc - mu) ** 2) / m
            unbiased = var * m / (m - 1) if m > 1 else var
            running_mean[c] = (1.0 - momentum) * float(running_mean[c]) + momentum * mu
            running_var[c] = (1.0 - momentum) * float(running_var[c]) + momentum * unbiased
        else:
            mu = float(running_mean[c])
            var = float(running_var[c])
        mean[c] = mu
        inv_std[c] = 1.0 / np.sqrt(var + eps)
        xhat = (xc - mu) * inv_std[c]
        out[:, c] = float(gamma[c]) * xhat + float(beta[c])
    return out, (x, gamma, mean, inv_std, training)


def batchnorm2d_backward_naive(dout, cache, *, threads=None):
    """One channel at a time, back through the forward's computational graph:

    mu = mean(x); xmu = x - mu; sq = xmu^2; var = mean(sq); sqrtvar = sqrt(var + eps);
    ivar = 1 / sqrtvar; xhat = xmu * ivar; out = gamma * xhat + beta.
    In eval mode mu and var are constants, so only the affine steps carry gradient.
    """
    x, gamma, mean, inv_std, training = check_batchnorm2d_cache(cache)
    dout = check_dout(dout, x.shape, x.dtype)
    N, C, H, W = x.shape
    m = N * H * W
    dx = np.empty_like(x)
    dgamma = np.empty(C, dtype=x.dtype)
    dbeta = np.empty(C, dtype=x.dtype)
    for c in range(C):
        xc = x[:, c].astype(np.float64)
        dc = dout[:, c].astype(np.float64)
        g = float(gamma[c])
        ivar = inv_std[c]
        xmu = xc - mean[c]
        xhat = xmu * ivar
        # out = gamma * xhat + beta
        dbeta[c] = np.sum(dc)
        dgamma[c] = np.sum(dc * xhat)
        dxhat = dc * g
        if not training:
            dx[:, c] = dxhat * ivar
            continue
        # xhat = xmu * ivar
        divar = np.sum(dxhat * xmu)
        dxmu1 = dxhat * ivar
        # ivar = 1 / sqrtvar
        sqrtvar = 1.0 / ivar
        dsqrtvar = -divar / sqrtvar ** 2
        # sqrtvar = sqrt(var + eps)
        dvar = 0.5 / sqrtvar * dsqrtvar
        # var = mean(sq)
        dsq = np.full(xc.shape, dvar / m)
        # sq = xmu^2
        dxmu2 = 2.0 * xmu * dsq
        # xmu = x - mu
        dx1 = dxmu1 + dxmu2
        dmu = -np.sum(dx1)
        # mu = mean(x)
        dx2 = np.full(xc.shape, dmu / m)
        dx[:, c] = dx1 + dx2
    return dx, dgamma, dbeta
