"""Adam's and SGD's updates in one pass over memory.

cnn/optim.py's NumPy update makes about ten temporary arrays per parameter: for
convnet (421,642 parameters, 401,408 of them in the first dense layer) that was
2.8 ms of a 23 ms training step on 2 threads. This kernel reads each parameter,
gradient and moment once and writes each once.

Same numbers as the NumPy update, bit for bit (tests/test_optim.py checks it):
every value goes through the same float operations in the same order,

    m = m * beta1 + (1 - beta1) * g
    v = v * beta2 + ((1 - beta2) * g) * g
    p = p * decay                               AdamW's decoupled decay, if any
    p = p - (step * m) / (sqrt(v / c2) + eps)   step = lr / c1

and for SGD with momentum mu (NumPy's ``v *= mu; v += g``, then Nesterov's look-ahead)

    v = v * mu + g
    p = p - lr * (g + mu * v)    Nesterov;   p = p - lr * v   otherwise

each intermediate rounded to the parameters' dtype (x86-64 evaluates float
arithmetic in float; sqrt in double then rounded is the correctly rounded
float square root, since 53 >= 2 * 24 + 2 bits), and the build has no FMA
contraction (baseline x86-64: no FMA instructions to contract into).

Parallel axis: the elements, in static blocks; each thread owns its block of
all four arrays.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from cnn._threads import MIN_WORK_PER_THREAD, threads_for


cdef void adam_kernel(floating* p, const floating* g, floating* m, floating* v,
                      Py_ssize_t n, floating beta1, floating one_minus_beta1,
                      floating beta2, floating one_minus_beta2, floating step,
                      floating c2, floating eps, floating decay, bint decoupled,
                      int threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, mi, vi, pi, denom, update
    for i in prange(n, num_threads=threads, schedule="static"):
        gi = g[i]
        mi = m[i] * beta1
        mi = mi + one_minus_beta1 * gi
        vi = v[i] * beta2
        update = one_minus_beta2 * gi
        update = update * gi
        vi = vi + update
        m[i] = mi
        v[i] = vi
        pi = p[i]
        if decoupled:
            pi = pi * decay
        denom = vi / c2
        denom = <floating>sqrt(denom)
        denom = denom + eps
        update = step * mi
        update = update / denom
        p[i] = pi - update


cdef void sgd_kernel(floating* p, const floating* g, floating* v, Py_ssize_t n,
                     floating lr, floating mu, bint nesterov, int threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, vi, update
    for i in prange(n, num_threads=threads, schedule="static"):
        gi = g[i]
        vi = v[i] * mu
        vi = vi + gi
        v[i] = vi
        if nesterov:
            update = mu * vi
            update = gi + update
        else:
            update = vi
        update = lr * update
        p[i] = p[i] - update


def check_update_arrays(names, arrays, writeable):
    """The arrays of one update: numpy, float32/float64, C-contiguous, of the first
    one's dtype and shape, and the ``writeable`` ones writeable."""
    param = arrays[0]
    for name, a in zip(names, arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        if a.dtype != param.dtype or a.shape != param.shape:
            raise ValueError(f"{name} must have {names[0]}'s dtype and shape "
                             f"{param.dtype} {param.shape}, got {a.dtype} {a.shape}")
    for name in writeable:
        if not arrays[names.index(name)].flags.writeable:
            raise ValueError(f"{name} must be writeable")


def sgd_update(param, grad, velocity, *, lr, momentum, nesterov=False, threads=None):
    """One SGD step with momentum in place on ``param`` and ``velocity`` (see the
    module comment). All three arrays C-contiguous, of one float dtype and shape."""
    arrays = (param, grad, velocity)
    check_update_arrays(("param", "grad", "velocity"), arrays, ("param", "velocity"))
    cdef Py_ssize_t n = param.size
    if n == 0:
        return
    cdef int nt = threads_for(threads, n, MIN_WORK_PER_THREAD)
    cdef bint look_ahead = bool(nesterov)
    cdef double r = lr, mu = momentum
    cdef float[::1] pf, gf, vf
    cdef double[::1] pd, gd, vd
    if param.dtype == np.float32:
        pf, gf, vf = (a.reshape(-1) for a in arrays)
        with nogil:
            sgd_kernel[float](&pf[0], &gf[0], &vf[0], n, <float>r, <float>mu, look_ahead, nt)
    else:
        pd, gd, vd = (a.reshape(-1) for a in arrays)
        with nogil:
            sgd_kernel[double](&pd[0], &gd[0], &vd[0], n, r, mu, look_ahead, nt)


def adam_update(param, grad, m, v, *, beta1, beta2, step, c2, eps, decay=None, threads=None):
    """One Adam step in place on ``param``, ``m`` and ``v`` (see the module comment);
    ``decay`` (AdamW) multiplies the parameter first. All four arrays must be
    C-contiguous, of one float dtype and one shape."""
    arrays = (param, grad, m, v)
    check_update_arrays(("param", "grad", "m", "v"), arrays, ("param", "m", "v"))
    cdef Py_ssize_t n = param.size
    if n == 0:
        return
    cdef int nt = threads_for(threads, n, MIN_WORK_PER_THREAD)
    cdef bint decoupled = decay is not None
    # the constants as the NumPy update has them: Python floats (double), then the dtype
    cdef double b1 = beta1, b2 = beta2, s = step, c = c2, e = eps
    cdef double d = decay if decoupled else 1.0
    cdef float[::1] pf, gf, mf, vf
    cdef double[::1] pd, gd, md, vd
    if param.dtype == np.float32:
        pf, gf, mf, vf = (a.reshape(-1) for a in arrays)
        with nogil:
            adam_kernel[float](&pf[0], &gf[0], &mf[0], &vf[0], n, <float>b1, <float>(1 - b1),
                               <float>b2, <float>(1 - b2), <float>s, <float>c, <float>e,
                               <float>d, decoupled, nt)
    else:
        pd, gd, md, vd = (a.reshape(-1) for a in arrays)
        with nogil:
            adam_kernel[double](&pd[0], &gd[0], &md[0], &vd[0], n, b1, 1 - b1, b2, 1 - b2,
                                s, c, e, d, decoupled, nt)
