"""conv2d -> relu -> maxpool2d fused: one pass per image, forward and backward.

Why fuse: run one by one, the three ops write the conv output (N, F, H', W')
to memory, read it back for relu, write it again, read it again for pooling,
and do the same with the gradients on the way back. For convnet's first layer
that is four passes over 6.4 MB per 64-image batch, far more than the L2
caches hold, and relu and pooling were a third of that layer's time. Fused, an
image's conv output (F, P) lives in its thread's workspace (50-100 KB, in L2)
while relu and pooling read it, and only the pooled output is written.

Equivalence with the three ops (tests/kernels/test_conv_relu_pool.py checks
it against the composition on every backend): relu is monotonic, so
maxpool(relu(c)) = relu(maxpool(c)). Each window's maximum of the conv output
c is found with max pooling's rule (the last maximum wins, a NaN beats every
number; see pool.pyx) and out = relu(max). On the way back, pooling routes a
window's gradient to its argmax and relu lets it through only where c > 0; so
the cache keeps the argmax where the max is > 0 and -1 (no gradient) where it
is not (a NaN or a max <= 0). When every value of a window is <= 0, unfused
pooling picks the last of the relu's zeros, whose gradient relu then stops:
the same zero gradient.

Layout: NCHW. cols (K, P) as in conv.pyx (K = C*KH*KW taps, P = H'*W'
pixels); the cache's argmax (N, F, Hp, Wp) is int64, the flat index into an
(H', W') plane of the conv output, as max pooling's cache.

Parallel axis: as conv.pyx, images; each thread owns its cols, conv-output
and gradient workspaces, and writes only its own images' out, argmax and dx.
With fewer images than threads (a batch of one at inference) the forward pass
also cuts each image's filters into blocks, so each thread computes and pools
its own filters. dw and db are sums over images: per-thread parts, added up
after the loop. Every GEMM is single-threaded BLAS; backward with fewer images
than threads gives BLAS the spare threads instead (training on one image is
rare enough not to deserve its own split).

Backward scatters dout through argmax into a zeroed (F, P) gradient of the
conv output; an index outside [0, P) is skipped, so a tampered cache cannot
write out of bounds. Windows may overlap (pool stride < kernel): the
scatter adds, and one thread owns the image.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t
from libc.string cimport memset

from im2col cimport ConvGeometry, conv_filter_block, conv_geometry, conv_image_backward
from maxpool_plane cimport maxpool_plane, maxpool_plane_exact

from cnn._blas_threads import blas_threads
from cnn._checks import check_argmax, check_blas_sizes, check_conv_relu_pool, check_dout
from cnn._threads import forward_split, resolve_threads, split_threads


cdef void relu_maxpool_plane(const floating* c, floating* out, int64_t* arg, Py_ssize_t Wc,
                             Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t Hp, Py_ssize_t Wp) noexcept nogil:
    """out (Hp, Wp) = relu(window max) of one conv-output plane c (Hc, Wc); arg gets
    the max's flat index where the max is > 0, else -1."""
    cdef Py_ssize_t q
    cdef floating v
    cdef int64_t keep
    if maxpool_plane(c, out, arg, Wc, KH, KW, sh, sw, Hp, Wp):
        maxpool_plane_exact(c, out, arg, Wc, KH, KW, sh, sw, Hp, Wp)
    for q in range(Hp * Wp):
        v = out[q]
        keep = v > 0                            # false for a NaN too
        arg[q] = (arg[q] & -keep) | (keep - 1)  # the index, or -1: no branch
        out[q] = 0 if v < 0 else v              # relu: a NaN stays a NaN


cdef bint relu_maxpool_plane_values(const floating* c, floating* out, Py_ssize_t Wc,
                                    Py_ssize_t Hp, Py_ssize_t Wp,
                                    floating bias) noexcept nogil:
    """Inference's 2x2, stride-2 case: out (Hp, Wp) = relu(window max + bias), no
    argmax, for a plane c computed without its bias. Adding the bias after the
    max gives the same numbers as adding it to every value first, bit for bit:
    rounding is monotonic, so max(fl(c + bias)) = fl(max(c) + bias); it saves
    writing the bias into the whole conv output before the GEMM (a fifth of
    convnet's first layer, 32 filters over 1 channel). The max runs in window
    order with later values winning ties, as the argmax version; returns True
    if the plane holds a NaN, which the caller then redoes with the exact rule."""
    cdef Py_ssize_t i, j
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* o
    cdef floating best, v
    cdef int nan = 0
    for i in range(Hp):
        r0 = c + 2 * i * Wc
        r1 = r0 + Wc
        o = out + i * Wp
        for j in range(Wp):
            best = r0[2 * j]
            nan = nan | (best != best)
            v = r0[2 * j + 1]
            nan = nan | (v != v)
            best = best if best > v else v
            v = r1[2 * j]
            nan = nan | (v != v)
            best = best if best > v else v
            v = r1[2 * j + 1]
            nan = nan | (v != v)
            best = best if best > v else v
            best = best + bias
            o[j] = 0 if best < 0 else best
    return nan


cdef struct Geometry:
    ConvGeometry conv      # see im2col.pxd
    Py_ssize_t PKH, PKW, psh, psw, Hp, Wp


cdef void forward_kernel(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                         const floating[::1] b, floating[:, :, ::1] out, int64_t[:, :, ::1] arg,
                         bint arg_per_thread, floating[:, ::1] pad_work,
                         floating[:, :, ::1] work, floating[:, :, ::1] conv, Geometry g,
                         Py_ssize_t filter_blocks, int loop_threads) noexcept nogil:
    """out (N, F, Hp*Wp) = maxpool(relu(w2 @ im2col(x[n]) + b)), one (image, filter
    block) per iteration. arg is (N, F, Hp*Wp), or with arg_per_thread (inference:
    nothing is kept) a (threads, F, Hp*Wp) scratch."""
    cdef Py_ssize_t N = x.shape[0], F = g.conv.F, L = g.conv.L
    cdef Py_ssize_t item, n, f, f0, f1, a, p
    cdef int tid
    cdef floating* c
    # Inference with 2x2/2 pooling adds the bias after the max (see
    # relu_maxpool_plane_values); everything else gets it in the GEMM.
    cdef bint late_bias = (arg_per_thread and g.PKH == 2 and g.PKW == 2 and g.psh == 2
                           and g.psw == 2)
    cdef const floating* gemm_bias = &b[0]
    if late_bias:
        gemm_bias = NULL
    for item in prange(N * filter_blocks, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        n = item // filter_blocks
        f0 = (item % filter_blocks) * F // filter_blocks
        f1 = (item % filter_blocks + 1) * F // filter_blocks
        c = &conv[tid, 0, 0]
        conv_filter_block(&x[n, 0, 0, 0], &w2[0, 0], gemm_bias, &pad_work[tid, 0],
                          &work[tid, 0, 0], c, f0, f1, &g.conv)
        a = tid if arg_per_thread else n
        for f in range(f1 - f0):
            if late_bias:
                if not relu_maxpool_plane_values(c + f * L, &out[n, f0 + f, 0], g.conv.row,
                                                 g.Hp, g.Wp, b[f0 + f]):
                    continue   # done without an argmax
                for p in range(L):         # a NaN: the exact rule, on the biased plane
                    c[f * L + p] = c[f * L + p] + b[f0 + f]
            relu_maxpool_plane(c + f * L, &out[n, f0 + f, 0], &arg[a, f0 + f, 0],
                               g.conv.row, g.PKH, g.PKW, g.psh, g.psw, g.Hp, g.Wp)


cdef void forward_nogil(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                        const floating[::1] b, floating[:, :, ::1] out, int64_t[:, :, ::1] arg,
                        bint arg_per_thread, floating[:, ::1] pad_work,
                        floating[:, :, ::1] work, floating[:, :, ::1] conv, Geometry g,
                        Py_ssize_t filter_blocks, int loop_threads):
    """forward_kernel without the GIL: the arrays are typed (and so held) on entry, and
    other Python threads (the service's event loop) run while the kernel does."""
    with nogil:
        forward_kernel(x, w2, b, out, arg, arg_per_thread, pad_work, work, conv, g,
                       filter_blocks, loop_threads)


cdef tuple forward_workspace(Geometry* g, Py_ssize_t threads, dtype, Py_ssize_t arg_rows):
    """(pad_work, work, conv, arg): each of ``threads`` threads' padded image, cols
    and conv output, and the argmax, ``arg_rows`` planes of it (every image's when
    kept, else one scratch per thread). What the forward pass and a prepared
    ConvReLUPoolPlan allocate."""
    return (np.empty((threads, g.conv.C * g.conv.plane), dtype=dtype),
            np.empty((threads, g.conv.K, g.conv.L), dtype=dtype),
            np.empty((threads, g.conv.F, g.conv.L), dtype=dtype),
            np.empty((arg_rows, g.conv.F, g.Hp * g.Wp), dtype=np.int64))


cdef run_forward(x, w2, b, out, bint arg_per_thread, tuple workspace, Geometry g,
                 Py_ssize_t filter_blocks, int loop_threads):
    """forward_nogil for x's dtype, with the arrays of ``forward_workspace``."""
    pad_work, work, conv, arg = workspace
    if x.dtype == np.float32:
        forward_nogil[float](x, w2, b, out, arg, arg_per_thread, pad_work, work, conv, g,
                             filter_blocks, loop_threads)
    else:
        forward_nogil[double](x, w2, b, out, arg, arg_per_thread, pad_work, work, conv, g,
                              filter_blocks, loop_threads)


cdef void backward_kernel(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                          const floating[:, :, ::1] dout, const int64_t[:, :, ::1] arg,
                          floating[:, :, :, ::1] dx, floating[:, :, ::1] dw_parts,
                          floating[:, ::1] db_parts, floating[:, ::1] pad_work,
                          floating[:, :, ::1] work, floating[:, :, ::1] dconv_work,
                          floating[:, :, ::1] dwork, Geometry g, bint need_dx,
                          int loop_threads) noexcept nogil:
    """Scatter dout[n] through arg into dconv (F, L), then the convolution's backward
    for image n (conv_image_backward, as conv.pyx); thread t adds its images' dw, db
    into part t."""
    cdef Py_ssize_t N = x.shape[0], F = g.conv.F, L = g.conv.L
    cdef Py_ssize_t Q = dout.shape[2]
    cdef Py_ssize_t n, f, q, a
    cdef int tid
    cdef floating* cols
    cdef floating* dconv
    cdef floating* dcols
    cdef floating acc
    for n in prange(N, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        cols = &work[tid, 0, 0]
        dconv = &dconv_work[tid, 0, 0]
        dcols = &dwork[tid, 0, 0]
        memset(dconv, 0, F * L * sizeof(floating))
        for f in range(F):
            acc = 0
            for q in range(Q):
                a = arg[n, f, q]
                if 0 <= a < L:
                    dconv[f * L + a] += dout[n, f, q]
                    acc = acc + dout[n, f, q]
            db_parts[tid, f] += acc
        conv_image_backward(&x[n, 0, 0, 0], &w2[0, 0], dconv, &dw_parts[tid, 0, 0],
                            &dx[n, 0, 0, 0], &pad_work[tid, 0], cols, dcols, need_dx,
                            &g.conv)


cdef Geometry geometry(tuple x_shape, tuple w_shape, stride, pad, conv_size, pool_kernel,
                       pool_stride, pool_size):
    cdef Geometry g
    g.conv = conv_geometry(x_shape, w_shape, stride, pad, conv_size)
    g.PKH, g.PKW = pool_kernel
    g.psh, g.psw = pool_stride
    g.Hp, g.Wp = pool_size
    return g


def conv2d_relu_maxpool2d_forward(x, w, b, stride=1, pad=0, pool_kernel=2, pool_stride=None,
                                  *, threads=None, need_cache=True):
    """maxpool2d(relu(conv2d(x, w, b, stride, pad)), pool_kernel, pool_stride) in one pass.

    x (N, C, H, W), w (F, C, KH, KW), b (F,) -> out (N, F, Hp, Wp), where the
    conv output is (N, F, H', W') as in conv2d_forward and Hp = (H' - PKH) //
    pool_stride_h + 1 as in maxpool2d_forward (pool_stride None: the kernel).
    Returns (out, cache); need_cache=False (inference) keeps no argmax and
    returns cache None.
    """
    (x, w, b, stride, pad, conv_size, pool_kernel, pool_stride,
     pool_size) = check_conv_relu_pool(x, w, b, stride, pad, pool_kernel, pool_stride)
    cdef Geometry g = geometry(x.shape, w.shape, stride, pad, conv_size, pool_kernel,
                               pool_stride, pool_size)
    N, F, Q = x.shape[0], g.conv.F, g.Hp * g.Wp
    check_blas_sizes("conv2d", g.conv.F, g.conv.K, g.conv.L)
    filter_blocks, loop_threads = forward_split(threads, N, g.conv.F, g.conv.K * g.conv.L)
    keep_arg = bool(need_cache)
    out = np.empty((N, F, Q), dtype=x.dtype)
    # Inference keeps no argmax: each thread reuses one image's worth of scratch.
    workspace = forward_workspace(&g, loop_threads, x.dtype, N if keep_arg else loop_threads)
    with blas_threads(1):
        run_forward(x, w.reshape(F, g.conv.K), b, out, not keep_arg, workspace, g,
                    filter_blocks, loop_threads)
    out = out.reshape(N, F, g.Hp, g.Wp)
    if not keep_arg:
        return out, None
    return out, (x, w, b, stride, pad, pool_kernel, pool_stride, workspace[3].reshape(out.shape))


def conv2d_relu_maxpool2d_backward(dout, cache, *, threads=None, need_dx=True):
    """Gradients of conv2d_relu_maxpool2d_forward: (dx, dw, db) shaped like (x, w, b);
    dx is None when need_dx is False."""
    if cache is None:
        raise ValueError("no cache: the forward pass ran with need_cache=False (inference)")
    x, w, b, stride, pad, pool_kernel, pool_stride, argmax = cache
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    (x, w, b, stride, pad, conv_size, pool_kernel, pool_stride,
     pool_size) = check_conv_relu_pool(x, w, b, stride, pad, pool_kernel, pool_stride)
    cdef Geometry g = geometry(x.shape, w.shape, stride, pad, conv_size, pool_kernel,
                               pool_stride, pool_size)
    N, F = x.shape[0], g.conv.F
    argmax = check_argmax(argmax, (N, F, g.Hp, g.Wp))
    dout = check_dout(dout, (N, F, g.Hp, g.Wp), x.dtype)
    check_blas_sizes("conv2d", g.conv.F, g.conv.K, g.conv.L)
    loop_threads, gemm_threads = split_threads(threads, N)
    need_dx = bool(need_dx)
    dx = np.empty_like(x) if need_dx else np.empty((N, 1, 1, 1), dtype=x.dtype)
    dw_parts = np.zeros((loop_threads, F, g.conv.K), dtype=x.dtype)
    db_parts = np.zeros((loop_threads, F), dtype=x.dtype)
    pad_work = np.empty((loop_threads, g.conv.C * g.conv.plane), dtype=x.dtype)
    work = np.empty((loop_threads, g.conv.K, g.conv.L), dtype=x.dtype)
    dconv = np.empty((loop_threads, F, g.conv.L), dtype=x.dtype)
    dwork = np.empty((loop_threads, g.conv.K, g.conv.L) if need_dx else (loop_threads, 1, 1),
                     dtype=x.dtype)
    w2 = w.reshape(F, g.conv.K)
    d3 = dout.reshape(N, F, g.Hp * g.Wp)
    a3 = argmax.reshape(N, F, g.Hp * g.Wp)
    with blas_threads(gemm_threads):
        if x.dtype == np.float32:
            backward_kernel[float](x, w2, d3, a3, dx, dw_parts, db_parts, pad_work, work,
                                   dconv, dwork, g, need_dx, loop_threads)
        else:
            backward_kernel[double](x, w2, d3, a3, dx, dw_parts, db_parts, pad_work, work,
                                    dconv, dwork, g, need_dx, loop_threads)
    dw = dw_parts.sum(axis=0) if loop_threads > 1 else dw_parts[0]
    db = db_parts.sum(axis=0) if loop_threads > 1 else db_parts[0]
    return (dx if need_dx else None), dw.reshape(w.shape), db


cdef class ConvReLUPoolPlan:
    """conv2d -> relu -> maxpool2d prepared once for inference, as ONNX Runtime's
    MLAS prepares a convolution before running it: the geometry, the thread split
    for every batch size and the per-thread workspaces are worked out when the
    plan is made, so a call checks only its input (dtype, layout, per-image
    shape) and runs the kernel without the GIL. A step of cnn.plan.InferencePlan.

    ConvReLUPoolPlan(w, b, input_shape, stride, pad, pool_kernel, pool_stride,
    threads=None): w (F, C, KH, KW), b (F,), input_shape one image's (C, H, W).
    w and b are kept by reference when they are C-contiguous in the right dtype
    (else copied): change them and the plan sees it (InferencePlan gives it
    arrays of its own snapshot of the model). ``run(x)`` maps x
    (N, C, H, W), any N, to out (N, F, Hp, Wp) = conv2d_relu_maxpool2d_forward's,
    and needs its caller to hold ``blas_threads(1)`` (InferencePlan does, once
    for the whole network); calling the plan itself takes it.

    The workspaces are the plan's own, reused by every call. A call that finds
    them in use (another thread is inside ``run``) takes fresh ones, so the
    plan is safe to share; the check and the claim happen under the GIL, before
    the kernel lets it go.
    """
    cdef Geometry g
    cdef readonly tuple input_shape, output_shape
    cdef readonly object dtype
    cdef readonly int threads
    cdef object w2, b, workspace
    cdef tuple splits
    cdef bint busy

    def __init__(self, w, b, input_shape, stride=1, pad=0, pool_kernel=2, pool_stride=None,
                 *, threads=None):
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(
                s, bool) and s > 0 for s in shape):
            raise ValueError(f"input_shape must be one image's (C, H, W), positive integers, "
                             f"got {input_shape!r}")
        w = np.asarray(w)
        probe = np.zeros((1,) + tuple(int(s) for s in shape),
                         dtype=w.dtype if w.dtype in (np.float32, np.float64) else np.float32)
        (probe, w, b, stride, pad, conv_size, pool_kernel, pool_stride,
         pool_size) = check_conv_relu_pool(probe, w, b, stride, pad, pool_kernel, pool_stride)
        self.g = geometry(probe.shape, w.shape, stride, pad, conv_size, pool_kernel,
                          pool_stride, pool_size)
        check_blas_sizes("conv2d", self.g.conv.F, self.g.conv.K, self.g.conv.L)
        self.input_shape = probe.shape[1:]
        self.output_shape = (self.g.conv.F, self.g.Hp, self.g.Wp)
        self.dtype = probe.dtype
        self.threads = resolve_threads(threads)
        # (filter_blocks, loop_threads) for N = 1 .. threads-1 images; more: (1, threads)
        self.splits = tuple(forward_split(self.threads, n, self.g.conv.F,
                                          self.g.conv.K * self.g.conv.L)
                            for n in range(1, self.threads))
        self.w2 = np.ascontiguousarray(w, dtype=self.dtype).reshape(self.g.conv.F,
                                                                    self.g.conv.K)
        self.b = np.ascontiguousarray(b, dtype=self.dtype)
        self.workspace = forward_workspace(&self.g, self.threads, self.dtype, self.threads)
        self.busy = False

    def run(self, x):
        """out (N, F, Hp, Wp) for x (N, C, H, W); see the class docstring."""
        if (type(x) is not np.ndarray or x.dtype != self.dtype or x.ndim != 4
                or x.shape[1:] != self.input_shape):
            raise ValueError(f"x must be a {self.dtype} array of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {np.shape(x)}")
        x = np.ascontiguousarray(x)
        N = x.shape[0]
        F, Q = self.g.conv.F, self.g.Hp * self.g.Wp
        out = np.empty((N, F, Q), dtype=self.dtype)
        if N == 0:
            return out.reshape(N, F, self.g.Hp, self.g.Wp)
        filter_blocks, loop_threads = (self.splits[N - 1] if N < self.threads
                                       else (1, self.threads))
        own = not self.busy
        workspace = (self.workspace if own else
                     forward_workspace(&self.g, self.threads, self.dtype, self.threads))
        self.busy = True
        try:
            run_forward(x, self.w2, self.b, out, True, workspace, self.g, filter_blocks,
                        loop_threads)
        finally:
            if own:
                self.busy = False
        return out.reshape(N, F, self.g.Hp, self.g.Wp)

    def __call__(self, x):
        with blas_threads(1):
            return self.run(x)
