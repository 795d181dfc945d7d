# Max pooling of one (H, W) plane, shared by pool.pyx and conv_relu_pool.pyx
# (cimported, inline code, like gemm.pxd). The tie and NaN rules are pool.pyx's
# (see its module comment): the last maximum in row-major window order wins,
# a NaN beats every number, and arg gets the flat index of the winner.
from cython cimport floating
from libc.stdint cimport int64_t


cdef inline bint beats(floating v, floating best) noexcept nogil:
    """v becomes the running max: v >= best (so the last of equal maxima wins), or v
    is a NaN (a NaN is above everything, and the last NaN wins). A number after a
    NaN best fails v >= best (comparisons with NaN are false) and is not a NaN, so
    it never displaces the NaN."""
    return v >= best or v != v


cdef inline void maxpool_plane_exact(const floating* x, floating* out, int64_t* arg,
                                     Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                                     Py_ssize_t Wout) noexcept nogil:
    """out, arg (Hout, Wout) from one plane x (H, W), one window at a time, NaN rule
    included. Branchy, so only used for the rare plane that holds a NaN."""
    cdef Py_ssize_t i, j, kh, kw, base, row
    cdef floating best, v
    cdef int64_t at
    for i in range(Hout):
        for j in range(Wout):
            base = i * sh * W + j * sw
            best = x[base]
            at = base
            for kh in range(KH):
                row = base + kh * W
                for kw in range(KW):
                    v = x[row + kw]
                    if beats(v, best):
                        best = v
                        at = row + kw
            out[i * Wout + j] = best
            arg[i * Wout + j] = at


cdef inline bint maxpool_plane(const floating* x, floating* out, int64_t* arg,
                               Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                               Py_ssize_t Wout) noexcept nogil:
    """out, arg (Hout, Wout) from one plane x (H, W), NaN aside; True if x had a NaN.

    The running max takes every value >= it, so the last max in row-major
    window order wins. Branch-free: the value is a max (written
    best if best > v else v, which is maxss/maxps exactly, and without NaN
    equals v if v >= best else best, so equal values, -0.0 and 0.0 included,
    give the later element's value, the one at the index), the index moves by a
    mask (-1 or 0 from v >= best), and the NaN flag is or-ed up, so the compiler
    vectorises the offset-major loops and random data costs no mispredicted
    branches.
    """
    cdef Py_ssize_t i, j, kh, kw, base, c, at
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* o
    cdef int64_t* a
    cdef floating best, v
    cdef int64_t best_at, t
    cdef int nan = 0
    if KH == 2 and KW == 2 and sh == 2 and sw == 2:
        # One window at a time, its four values in registers.
        for i in range(Hout):
            base = 2 * i * W
            r0 = x + base
            r1 = r0 + W
            o = out + i * Wout
            a = arg + i * Wout
            for j in range(Wout):
                c = 2 * j
                best = r0[c]
                best_at = base + c
                nan = nan | (best != best)
                v = r0[c + 1]
                t = v >= best
                nan = nan | (v != v)
                best = best if best > v else v
                best_at = best_at + ((base + c + 1 - best_at) & -t)
                v = r1[c]
                t = v >= best
                nan = nan | (v != v)
                best = best if best > v else v
                best_at = best_at + ((base + W + c - best_at) & -t)
                v = r1[c + 1]
                t = v >= best
                nan = nan | (v != v)
                best = best if best > v else v
                best_at = best_at + ((base + W + c + 1 - best_at) & -t)
                o[j] = best
                a[j] = best_at
        return nan
    # Offset-major: the running max of every window of the plane is updated with
    # the window element at offset (kh, kw), offsets in row-major order. The j
    # loop is contiguous when sw == 1.
    for kh in range(KH):
        for kw in range(KW):
            for i in range(Hout):
                at = (i * sh + kh) * W + kw
                r0 = x + at
                o = out + i * Wout
                a = arg + i * Wout
                if kh == 0 and kw == 0:
                    for j in range(Wout):
                        v = r0[j * sw]
                        nan = nan | (v != v)
                        o[j] = v
                        a[j] = at + j * sw
                elif sw == 1:
                    for j in range(Wout):
                        v = r0[j]
                        best = o[j]
                        t = v >= best
                        nan = nan | (v != v)
                        o[j] = best if best > v else v
                        a[j] = a[j] + ((at + j - a[j]) & -t)
                else:
                    for j in range(Wout):
                        v = r0[j * sw]
                        best = o[j]
                        t = v >= best
                        nan = nan | (v != v)
                        o[j] = best if best > v else v
                        a[j] = a[j] + ((at + j * sw - a[j]) & -t)
    return nan
