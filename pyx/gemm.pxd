# Row-major GEMM on top of SciPy's Fortran (column-major) BLAS, for fused float/double.
# Declarations with inline code, cimported (`from gemm cimport gemm_rowmajor`) by the
# modules that multiply matrices, as scikit-learn's _cython_blas.pxd is: each module
# compiles its own copy, so the call stays nogil with no cross-module C-API.
#
# A row-major (r, c) array is, to BLAS, a column-major (c, r) matrix: the
# transpose. So C = op(A) @ op(B) in row-major is C^T = op(B)^T @ op(A)^T in
# BLAS terms: swap the operands and the m/n sizes, keep the transpose flags.
#
# A product with one row or one column of output goes to GEMV: OpenBLAS's GEMM
# packs both operands first, which for a dense layer on one sample (1 x 3136
# times 3136 x 128) took 300 us where GEMV streams the weights once in ~30.
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv
from cython cimport floating


cdef inline void gemm_rowmajor(bint trans_a, bint trans_b, int m, int n, int k,
                               floating alpha, const floating* a, int lda,
                               const floating* b, int ldb, floating beta,
                               floating* c, int ldc) noexcept nogil:
    """c (m, n) = alpha * op(a) @ op(b) + beta * c, all row-major.

    op(a) is (m, k), op(b) is (k, n); lda/ldb/ldc are row strides in elements.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef char tv
    cdef int rows, cols, inc_x, i, one = 1
    if (m == 1 or n == 1) and beta == 0:
        # Some OpenBLAS versions scale y by beta = 0 as a product, so garbage
        # (NaN) in uninitialised output would survive: start from zeros.
        if m == 1:
            for i in range(n):
                c[i] = 0
        else:
            for i in range(m):
                c[i * ldc] = 0
    if m == 1:
        # c (1, n) = op(a) (1, k) @ op(b) (k, n): BLAS sees y (n) = op(b)^T @ x.
        # Untransposed, b is column-major (n, k) with ld ldb; transposed, (k, n).
        tv = b'T' if trans_b else b'N'
        rows = k if trans_b else n
        cols = n if trans_b else k
        inc_x = lda if trans_a else 1
        if floating is float:
            sgemv(&tv, &rows, &cols, &alpha, <float*>b, &ldb, <float*>a, &inc_x,
                  &beta, c, &one)
        else:
            dgemv(&tv, &rows, &cols, &alpha, <double*>b, &ldb, <double*>a, &inc_x,
                  &beta, c, &one)
        return
    if n == 1:
        # c (m, 1) = op(a) (m, k) @ op(b) (k, 1): y (m), strided by ldc, = op(a) @ x.
        # Untransposed, a is column-major (k, m) with ld lda; transposed, (m, k).
        tv = b'N' if trans_a else b'T'
        rows = m if trans_a else k
        cols = k if trans_a else m
        inc_x = 1 if trans_b else ldb
        if floating is float:
            sgemv(&tv, &rows, &cols, &alpha, <float*>a, &lda, <float*>b, &inc_x,
                  &beta, c, &ldc)
        else:
            dgemv(&tv, &rows, &cols, &alpha, <double*>a, &lda, <double*>b, &inc_x,
                  &beta, c, &ldc)
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
