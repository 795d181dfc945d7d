# Row-major GEMM on top of SciPy's Fortran (column-major) BLAS, for fused float/double.
# Included textually by the modules that multiply matrices, so each keeps one
# nogil call site and no cross-module cimport is needed.
#
# A row-major (r, c) array is, to BLAS, a column-major (c, r) matrix: the
# transpose. So C = op(A) @ op(B) in row-major is C^T = op(B)^T @ op(A)^T in
# BLAS terms: swap the operands and the m/n sizes, keep the transpose flags.
from scipy.linalg.cython_blas cimport sgemm, dgemm
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
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
