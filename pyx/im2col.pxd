# im2col / col2im for one NCHW image, shared by the modules that run
# convolutions as GEMMs (cimported, inline code, like gemm.pxd).
#
# cols is (C*KH*KW, Hout*Wout): one row per filter tap in w's memory order
# (c, kh, kw), one column per output pixel. Rows are filled a run of valid
# pixels at a time, the padding as zeros, so no index is ever computed that
# falls outside x.
from libc.string cimport memcpy, memset
from cython cimport floating

from gemm cimport gemm_rowmajor


cdef inline Py_ssize_t first_valid(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """Smallest o >= 0 with o*stride + offset >= 0 (offset = k - pad)."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t end_valid(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                 Py_ssize_t out) noexcept nogil:
    """One past the largest o < out with o*stride + offset < size."""
    cdef Py_ssize_t last = size - 1 - offset
    if last < 0:
        return 0
    last = last // stride + 1
    return last if last < out else out


cdef inline void im2col(const floating* x, floating* cols,
                        Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t Hout, Py_ssize_t Wout) noexcept nogil:
    """cols (C*KH*KW, Hout*Wout) from one image x (C, H, W); padding reads as 0."""
    cdef Py_ssize_t c, kh, kw, oh, ow, ih, ow_lo, ow_hi, oh_lo, oh_hi, iw0
    cdef floating* dst
    cdef const floating* src
    for c in range(C):
        for kh in range(KH):
            oh_lo = first_valid(kh - ph, sh)
            oh_hi = end_valid(kh - ph, sh, H, Hout)
            for kw in range(KW):
                ow_lo = first_valid(kw - pw, sw)
                ow_hi = end_valid(kw - pw, sw, W, Wout)
                for oh in range(Hout):
                    dst = cols + oh * Wout
                    if oh < oh_lo or oh >= oh_hi or ow_lo >= ow_hi:
                        memset(dst, 0, Wout * sizeof(floating))
                        continue
                    ih = oh * sh + kh - ph
                    iw0 = kw - pw
                    src = x + (c * H + ih) * W
                    if ow_lo > 0:
                        memset(dst, 0, ow_lo * sizeof(floating))
                    if sw == 1:
                        # Rows are short (a few dozen values): an inline loop the
                        # compiler vectorises beats a memcpy call here.
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] = src[ow + iw0]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] = src[ow * sw + iw0]
                    if ow_hi < Wout:
                        memset(dst + ow_hi, 0, (Wout - ow_hi) * sizeof(floating))
                cols += Hout * Wout


cdef inline void col2im(const floating* cols, floating* x,
                        Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t Hout, Py_ssize_t Wout) noexcept nogil:
    """Add cols (C*KH*KW, Hout*Wout) back into one image x (C, H, W), zeroed first.

    The adjoint of im2col: overlapping windows accumulate, padding is dropped.
    """
    cdef Py_ssize_t c, kh, kw, oh, ow, ow_lo, ow_hi, oh_lo, oh_hi, iw0
    cdef const floating* src
    cdef floating* dst
    memset(x, 0, C * H * W * sizeof(floating))
    for c in range(C):
        for kh in range(KH):
            oh_lo = first_valid(kh - ph, sh)
            oh_hi = end_valid(kh - ph, sh, H, Hout)
            for kw in range(KW):
                ow_lo = first_valid(kw - pw, sw)
                ow_hi = end_valid(kw - pw, sw, W, Wout)
                iw0 = kw - pw
                for oh in range(oh_lo, oh_hi):
                    src = cols + oh * Wout
                    dst = x + (c * H + oh * sh + kh - ph) * W + iw0
                    if sw == 1:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] += src[ow]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow * sw] += src[ow]
                cols += Hout * Wout


# The "wide" layout, for stride 1: the image is first copied into a zero-padded
# buffer whose channel planes are (H + 2*ph, Wp = W + 2*pw) plus KW - 1 spare
# values ("plane" values each). The convolution is then computed for every
# column of the padded width: output row oh holds Wp values, of which the first
# Wout = Wp - KW + 1 are the real outputs and the last KW - 1 are junk that no
# caller reads. What that buys: cols row (c, kh, kw) is one contiguous run of
# the padded plane, starting at kh*Wp + kw, Hout*Wp values long, so im2col is
# C*KH*KW memcpy calls instead of C*KH*KW*Hout short row copies with edge
# tests, and col2im is as many long vector adds. (convnet's second layer:
# im2col went from ~31 us to ~10 us per image.) The junk columns cost
# (KW-1)/Wout more GEMM work (14% there).
# The junk outputs of row oh read into row oh+1 of the padded plane, and those
# of the last row into the spare values, which is why a plane has KW - 1 of
# them: every read stays inside the buffer.

cdef inline void pad_image(const floating* x, floating* xp, Py_ssize_t C, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Wp,
                           Py_ssize_t plane) noexcept nogil:
    """xp (C, plane) = x (C, H, W) zero-padded by ph rows and pw columns each side."""
    cdef Py_ssize_t c, i
    memset(xp, 0, C * plane * sizeof(floating))
    for c in range(C):
        for i in range(H):
            memcpy(xp + c * plane + (i + ph) * Wp + pw, x + (c * H + i) * W,
                   W * sizeof(floating))


cdef inline void unpad_image(const floating* xp, floating* x, Py_ssize_t C, Py_ssize_t H,
                             Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Wp,
                             Py_ssize_t plane) noexcept nogil:
    """x (C, H, W) = the interior of a padded xp (C, plane): pad_image's adjoint,
    which drops what landed on the padding."""
    cdef Py_ssize_t c, i
    for c in range(C):
        for i in range(H):
            memcpy(x + (c * H + i) * W, xp + c * plane + (i + ph) * Wp + pw,
                   W * sizeof(floating))


cdef inline void im2col_wide(const floating* xp, floating* cols, Py_ssize_t C, Py_ssize_t plane,
                             Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW,
                             Py_ssize_t Hout) noexcept nogil:
    """cols (C*KH*KW, Hout*Wp) from a padded image xp (C, plane), stride 1."""
    cdef Py_ssize_t c, kh, kw, L = Hout * Wp
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                memcpy(cols, xp + c * plane + kh * Wp + kw, L * sizeof(floating))
                cols += L


cdef inline void col2im_wide(const floating* cols, floating* xp, Py_ssize_t C, Py_ssize_t plane,
                             Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW,
                             Py_ssize_t Hout) noexcept nogil:
    """Add cols (C*KH*KW, Hout*Wp) into a padded image xp (C, plane), zeroed first:
    im2col_wide's adjoint. Junk columns must hold zeros (their dout was zero)."""
    cdef Py_ssize_t c, kh, kw, i, L = Hout * Wp
    cdef floating* dst
    memset(xp, 0, C * plane * sizeof(floating))
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                dst = xp + c * plane + kh * Wp + kw
                for i in range(L):
                    dst[i] += cols[i]
                cols += L


cdef struct ConvGeometry:
    # x (C, H, W) per image, w (F, C, KH, KW), K = C*KH*KW; conv output (Hc, Wc)
    Py_ssize_t C, H, W, F, K, KH, KW, sh, sw, ph, pw, Hc, Wc
    # How the kernels hold an image's conv output and its cols: rows of ``row``
    # values (Wc, or the padded width in the wide layout), L = Hc * row per plane
    Py_ssize_t row, L
    # the wide layout (stride 1) and its padded planes of ``plane`` values
    bint wide
    Py_ssize_t plane


cdef inline ConvGeometry conv_geometry(tuple x_shape, tuple w_shape, stride, pad,
                                       conv_size):
    cdef ConvGeometry g
    g.C, g.H, g.W = x_shape[1], x_shape[2], x_shape[3]
    g.F, g.KH, g.KW = w_shape[0], w_shape[2], w_shape[3]
    g.K = g.C * g.KH * g.KW
    g.sh, g.sw = stride
    g.ph, g.pw = pad
    g.Hc, g.Wc = conv_size
    g.wide = g.sh == 1 and g.sw == 1
    g.row = g.W + 2 * g.pw if g.wide else g.Wc
    g.plane = (g.H + 2 * g.ph) * g.row + g.KW - 1 if g.wide else 1
    g.L = g.Hc * g.row
    return g


cdef inline void image_cols(const floating* x, floating* xp, floating* cols,
                            ConvGeometry* g) noexcept nogil:
    """cols (K, L) of one image x (C, H, W); xp is the wide layout's padded scratch."""
    if g.wide:
        pad_image(x, xp, g.C, g.H, g.W, g.ph, g.pw, g.row, g.plane)
        im2col_wide(xp, cols, g.C, g.plane, g.row, g.KH, g.KW, g.Hc)
    else:
        im2col(x, cols, g.C, g.H, g.W, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.Hc, g.Wc)


cdef inline void image_col2im(const floating* dcols, floating* xp, floating* dx,
                              ConvGeometry* g) noexcept nogil:
    """dx (C, H, W) of one image from its dcols (K, L): image_cols's adjoint."""
    if g.wide:
        col2im_wide(dcols, xp, g.C, g.plane, g.row, g.KH, g.KW, g.Hc)
        unpad_image(xp, dx, g.C, g.H, g.W, g.ph, g.pw, g.row, g.plane)
    else:
        col2im(dcols, dx, g.C, g.H, g.W, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.Hc, g.Wc)


cdef inline void conv_filter_block(const floating* x, const floating* w2, const floating* b,
                                   floating* xp, floating* cols, floating* o,
                                   Py_ssize_t f0, Py_ssize_t f1,
                                   ConvGeometry* g) noexcept nogil:
    """o (f1 - f0, L) = w2[f0:f1] (w2 is (F, K)) @ cols of image x + b[f0:f1]: filters
    f0..f1-1 of one image's conv output, as the kernels hold it (rows of g.row
    values); b NULL: without the bias (a caller that adds it later, to fewer
    values)."""
    cdef Py_ssize_t f, p, L = g.L
    image_cols(x, xp, cols, g)
    if b != NULL:
        for f in range(f1 - f0):
            for p in range(L):
                o[f * L + p] = b[f0 + f]
    gemm_rowmajor(False, False, <int>(f1 - f0), <int>L, <int>g.K, <floating>1.0,
                  w2 + f0 * g.K, <int>g.K, cols, <int>L,
                  <floating>(0.0 if b == NULL else 1.0), o, <int>L)


cdef inline void conv_image_backward(const floating* x, const floating* w2,
                                     const floating* dconv, floating* dw, floating* dx,
                                     floating* xp, floating* cols, floating* dcols,
                                     bint need_dx, ConvGeometry* g) noexcept nogil:
    """One image's part of a convolution's backward pass, from the gradient of its
    conv output dconv (F, L), held as the kernels hold the output (in the wide
    layout, zeros in the junk columns): dw (F, K) += dconv @ cols.T and, with
    need_dx, dx (C, H, W) = col2im(w2.T @ dconv). conv_filter_block's backward,
    shared by conv.pyx and conv_relu_pool.pyx, which differ only in how they
    make dconv. xp, cols (K, L) and dcols (K, L) are the thread's scratch."""
    cdef Py_ssize_t F = g.F, K = g.K, L = g.L
    image_cols(x, xp, cols, g)
    gemm_rowmajor(False, True, <int>F, <int>K, <int>L, <floating>1.0, dconv, <int>L,
                  cols, <int>L, <floating>1.0, dw, <int>K)
    if need_dx:
        gemm_rowmajor(True, False, <int>K, <int>L, <int>F, <floating>1.0, w2, <int>K,
                      dconv, <int>L, <floating>0.0, dcols, <int>L)
        image_col2im(dcols, xp, dx, g)
