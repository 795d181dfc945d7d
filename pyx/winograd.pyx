"""Winograd convolution F(m x m, 3 x 3), m = 2 or 4: 3x3 stride-1 layers with
fewer multiplies (the NumPy twin and the algebra: cnn/reference/winograd.py).

Three stages per block of T output tiles, all in one thread's workspace:

    V (C, alpha^2, T)  input transform B^T d B of the block's tiles, every channel
    M (F, alpha^2, T)  M[:, pos] = U[pos] (F, C) @ V[:, pos]: one GEMM per tile position
    out                output transform A^T M A (+ bias, ReLU as an epilogue) into
                       the tiles' m x m outputs, those past the output's edge dropped

with alpha = m + 2. U (alpha^2, F, C), the filters' transform, is computed once
by ``winograd_filters`` (a model computes it when its weights change, not per
call). Against im2col + GEMM the GEMM stage does 16/36 (m = 2) or 36/144 (m =
4) of the multiplies; the transforms are additions, a few per value. The input
is copied once into a zero-padded buffer that every tile lies inside, so the
transforms never test bounds. The transforms run over many tiles at a time
(loops the compiler vectorises): the input's column transform over whole rows
of the padded image, which are then cut into their m phases so that each
tile's row transform reads contiguous runs; the output's over all tiles of the
block. V and M keep a position's T values contiguous per channel/filter, which
are the GEMM's rows (leading dimension alpha^2 * T).

Parallel axis: blocks of tiles, over the batch's images together, so a batch
of one image still gives every thread blocks of its own. A block is sized so
that its V and M stay in the thread's L2 cache from one stage to the next
(``tiles_per_block``); each GEMM runs single-threaded, as in conv.pyx, and the
blocks write disjoint outputs.

Used by: the inference pass of fused Conv2D -> ReLU -> MaxPool2D steps with
``pool=True`` (m = 2; the rule and its measurements: cnn/winograd.py). Without
pooling as the epilogue the m x m outputs of a tile are interleaved into the
output rows, which on 14-pixel rows costs what the saved multiplies gain
(quiet Xeon @ 2.80GHz, 1 thread, convnet's conv2 alone: im2col 7.5 ms, F(2, 3)
7.9, F(4, 3) 11.4); with it, F(2, 3) wins from 32 channels up. F(4, 3) needs
cheaper transforms (its output transform is the larger) before any layer
should take it.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from gemm cimport gemm_rowmajor

from cnn._blas_threads import blas_threads
from cnn._checks import as_float_array, check_blas_sizes
from cnn._threads import threads_for


# L2 bytes a thread's V and M may take together: half of the smallest L2 of the
# machines we run on (512 KiB on Zen 3), leaving room for U and the output.
BLOCK_BYTES = 256 * 1024
MIN_TILES_PER_BLOCK = 8
MAX_TILES_PER_BLOCK = 512     # = MAX_RUNS: at most one run per tile


# Tiles transformed together: the transforms below are loops over the tiles of
# a group (GROUP values apart), which the compiler turns into vector code.
cdef enum:
    GROUP = 16
    # most tile-row runs in a block: MAX_TILES_PER_BLOCK tiles, each a run at worst
    MAX_RUNS = 512


cdef inline void input_1d(const floating* d, Py_ssize_t ds, floating* v, Py_ssize_t vs,
                          int m, int n) noexcept nogil:
    """v = B^T d along one line of alpha values (ds, vs apart), for n tiles at once."""
    cdef int t
    if m == 2:
        for t in range(n):
            v[t] = d[t] - d[2 * ds + t]
            v[vs + t] = d[ds + t] + d[2 * ds + t]
            v[2 * vs + t] = d[2 * ds + t] - d[ds + t]
            v[3 * vs + t] = d[ds + t] - d[3 * ds + t]
    else:
        for t in range(n):
            v[t] = 4 * d[t] - 5 * d[2 * ds + t] + d[4 * ds + t]
            v[vs + t] = d[3 * ds + t] + d[4 * ds + t] - 4 * (d[ds + t] + d[2 * ds + t])
            v[2 * vs + t] = d[4 * ds + t] - d[3 * ds + t] + 4 * (d[ds + t] - d[2 * ds + t])
            v[3 * vs + t] = d[4 * ds + t] - d[2 * ds + t] + 2 * (d[3 * ds + t] - d[ds + t])
            v[4 * vs + t] = d[4 * ds + t] - d[2 * ds + t] + 2 * (d[ds + t] - d[3 * ds + t])
            v[5 * vs + t] = 4 * d[ds + t] - 5 * d[3 * ds + t] + d[5 * ds + t]


cdef inline void output_1d(const floating* s, Py_ssize_t ss, floating* y, Py_ssize_t ys,
                           int m, int n) noexcept nogil:
    """y = A^T s along one line, alpha values in and m out, for n tiles at once."""
    cdef int t
    if m == 2:
        for t in range(n):
            y[t] = s[t] + s[ss + t] + s[2 * ss + t]
            y[ys + t] = s[ss + t] - s[2 * ss + t] - s[3 * ss + t]
    else:
        for t in range(n):
            y[t] = s[t] + s[ss + t] + s[2 * ss + t] + s[3 * ss + t] + s[4 * ss + t]
            y[ys + t] = s[ss + t] - s[2 * ss + t] + 2 * (s[3 * ss + t] - s[4 * ss + t])
            y[2 * ys + t] = s[ss + t] + s[2 * ss + t] + 4 * (s[3 * ss + t] + s[4 * ss + t])
            y[3 * ys + t] = (s[ss + t] - s[2 * ss + t] + 8 * (s[3 * ss + t] - s[4 * ss + t])
                             + s[5 * ss + t])


cdef struct WinogradGeometry:
    # x (N, C, H, W), 3x3 filters (F, C), zero padding pad; out (N, F, Ho, Wo)
    Py_ssize_t N, C, H, W, F, pad, Ho, Wo
    int m, alpha
    # tH x tW tiles of m x m outputs per image; xp, the zero-padded input, is
    # (N, C, Hp, Wp) with Hp = tH*m + 2 and Wp = tW*m + 2, so every tile lies in it
    Py_ssize_t tH, tW, Hp, Wp
    # T tiles per block, nblocks blocks
    Py_ssize_t T, nblocks
    # pool: the output is maxpool 2x2/2 of the ReLU'd convolution, (N, F, Hq, Wq)
    bint pool
    Py_ssize_t Hq, Wq


cdef inline int group_at(Py_ssize_t tile, Py_ssize_t left, WinogradGeometry* g,
                         Py_ssize_t* n, Py_ssize_t* ti, Py_ssize_t* tj) noexcept nogil:
    """Where tile number ``tile`` of the batch is (image, tile row, tile column), and
    how many tiles from it form a group: at most GROUP and ``left``, and never past
    the end of its tile row (a group's tiles are m columns apart)."""
    n[0] = tile // (g.tH * g.tW)
    ti[0] = tile // g.tW % g.tH
    tj[0] = tile % g.tW
    return <int>min(<Py_ssize_t>GROUP, min(left, g.tW - tj[0]))


cdef inline void input_row(const floating* ph, floating* v, Py_ssize_t vs, int m,
                           int n) noexcept nogil:
    """v = d B for n tiles along a row, d read from the row's phases ph (rows of
    GROUP + 1): value j of tile t is ph[j, t] for j < m, ph[j - m, t + 1] after."""
    cdef int t
    cdef Py_ssize_t P = GROUP + 1
    if m == 2:
        for t in range(n):
            v[t] = ph[t] - ph[t + 1]
            v[vs + t] = ph[P + t] + ph[t + 1]
            v[2 * vs + t] = ph[t + 1] - ph[P + t]
            v[3 * vs + t] = ph[P + t] - ph[P + t + 1]
    else:
        for t in range(n):
            v[t] = 4 * ph[t] - 5 * ph[2 * P + t] + ph[t + 1]
            v[vs + t] = ph[3 * P + t] + ph[t + 1] - 4 * (ph[P + t] + ph[2 * P + t])
            v[2 * vs + t] = ph[t + 1] - ph[3 * P + t] + 4 * (ph[P + t] - ph[2 * P + t])
            v[3 * vs + t] = ph[t + 1] - ph[2 * P + t] + 2 * (ph[3 * P + t] - ph[P + t])
            v[4 * vs + t] = ph[t + 1] - ph[2 * P + t] + 2 * (ph[P + t] - ph[3 * P + t])
            v[5 * vs + t] = 4 * ph[P + t] - 5 * ph[3 * P + t] + ph[P + t + 1]


cdef inline void store_row(const floating* y, Py_ssize_t ys, floating* row, floating bias,
                           bint relu, int m, Py_ssize_t n) noexcept nogil:
    """row[m*t + j] = y[j*ys + t] + bias (then ReLU) for t < n, j < m: the m outputs of
    n tiles along an output row, interleaved; written out for m = 2 and 4."""
    cdef Py_ssize_t t
    cdef floating zero = 0
    if m == 2:
        if relu:
            for t in range(n):
                row[2 * t] = max(y[t] + bias, zero)
                row[2 * t + 1] = max(y[ys + t] + bias, zero)
        else:
            for t in range(n):
                row[2 * t] = y[t] + bias
                row[2 * t + 1] = y[ys + t] + bias
    else:
        if relu:
            for t in range(n):
                row[4 * t] = max(y[t] + bias, zero)
                row[4 * t + 1] = max(y[ys + t] + bias, zero)
                row[4 * t + 2] = max(y[2 * ys + t] + bias, zero)
                row[4 * t + 3] = max(y[3 * ys + t] + bias, zero)
        else:
            for t in range(n):
                row[4 * t] = y[t] + bias
                row[4 * t + 1] = y[ys + t] + bias
                row[4 * t + 2] = y[2 * ys + t] + bias
                row[4 * t + 3] = y[3 * ys + t] + bias


cdef inline void split_phases(const floating* r, floating* p, Py_ssize_t n,
                              int m) noexcept nogil:
    """p[q, t] = r[m*t + q] for q < m, t < n (rows of GROUP + 1 values): a row cut
    into its m phases, so that the tiles' row transform reads contiguous runs.
    Written out for m = 2 and 4, so the compiler sees the interleave."""
    cdef Py_ssize_t t
    if m == 2:
        for t in range(n):
            p[t] = r[2 * t]
            p[GROUP + 1 + t] = r[2 * t + 1]
    else:
        for t in range(n):
            p[t] = r[4 * t]
            p[GROUP + 1 + t] = r[4 * t + 1]
            p[2 * (GROUP + 1) + t] = r[4 * t + 2]
            p[3 * (GROUP + 1) + t] = r[4 * t + 3]


cdef void transform_block(const floating* xp, floating* V, Py_ssize_t first,
                          Py_ssize_t count, WinogradGeometry* g) noexcept nogil:
    """V[pos, c, t] = (B^T d B)[pos] of tiles first..first+count-1, every channel.

    For a group of tiles along one tile row, the column transform runs over whole
    rows of xp (the alpha rows the group covers, contiguous), each result row is
    cut into its m phases, and the row transform then reads tile t's value j as
    phase j of column t (j < m) or phase j - m of column t + 1: contiguous runs,
    written straight into V."""
    cdef Py_ssize_t t0 = 0, c, k, n, ti, tj, a = g.alpha, m = g.m, width
    cdef Py_ssize_t A2 = a * a, P = GROUP + 1
    cdef int ng
    cdef floating r[6 * (4 * GROUP + 2)]
    cdef floating phases[6 * 4 * (GROUP + 1)]
    cdef const floating* src
    cdef floating* ph
    while t0 < count:
        ng = group_at(first + t0, count - t0, g, &n, &ti, &tj)
        width = ng * m + 2
        for c in range(g.C):
            src = xp + ((n * g.C + c) * g.Hp + ti * m) * g.Wp + tj * m
            # columns: r (alpha, width) = B^T (the alpha rows of xp)
            input_1d(src, g.Wp, r, 4 * GROUP + 2, g.m, <int>width)
            for k in range(a):
                ph = &phases[k * m * P]
                split_phases(&r[k * (4 * GROUP + 2)], ph, ng + 1, g.m)
                # rows: tile t's a values are phases 0..m-1 at t, then 0..1 at t + 1
                input_row(ph, V + (c * A2 + k * a) * g.T + t0, g.T, g.m, ng)
        t0 += ng


cdef inline void pooled_run(const floating* y, Py_ssize_t T, Py_ssize_t t0, Py_ssize_t n,
                            floating bias, floating* row) noexcept nogil:
    """The pooled epilogue of n tiles from t0 along a tile row (m = 2: a tile is one
    2x2 pooling window): row[t] = max(relu(y + bias)) over tile t0 + t's four
    outputs. One value per tile, so the run is contiguous in the output."""
    cdef Py_ssize_t t
    cdef floating value
    cdef floating zero = 0
    for t in range(n):
        value = max(max(y[t0 + t], y[T + t0 + t]),
                    max(y[2 * T + t0 + t], y[3 * T + t0 + t])) + bias
        row[t] = max(value, zero)


cdef void output_block(const floating* M, const floating* b, floating* out,
                       floating* work, Py_ssize_t first, Py_ssize_t count, bint relu,
                       WinogradGeometry* g) noexcept nogil:
    """out's m x m outputs of tiles first..first+count-1: A^T M A + b, then ReLU.

    One filter at a time, over all the block's tiles at once (loops as long as
    the block, not a tile row): columns transformed straight from M into tmp,
    rows into y, then y stored a tile row's run at a time (the tiles past the
    output's edge only in part). work holds tmp (m, alpha, T) and y (m, m, T)."""
    cdef Py_ssize_t t0, f, i, j, r, a = g.alpha, m = g.m, T = g.T
    cdef Py_ssize_t A2 = a * a, runs = 0, full
    cdef floating* tmp = work
    cdef floating* y = work + m * a * T
    cdef floating bias, value
    cdef floating* row
    # The block's tiles as runs along tile rows: where each run's outputs start in
    # out (per filter), its tiles, the rows and the columns inside the output.
    cdef Py_ssize_t start[MAX_RUNS]
    cdef Py_ssize_t first_tile[MAX_RUNS]
    cdef Py_ssize_t run_tiles[MAX_RUNS]
    cdef Py_ssize_t image[MAX_RUNS]
    cdef Py_ssize_t run_rows[MAX_RUNS]
    cdef Py_ssize_t last_cols[MAX_RUNS]
    # with pool: where the run's pooled values start in out (per filter) and how
    # many of its tiles lie inside the pooled output (Hq x Wq: an odd last conv
    # row or column is dropped, as maxpool2d drops it)
    cdef Py_ssize_t pooled_start[MAX_RUNS]
    cdef Py_ssize_t pooled_tiles[MAX_RUNS]
    cdef Py_ssize_t n, ti, tj
    t0 = 0
    while t0 < count:
        n = (first + t0) // (g.tH * g.tW)
        ti = (first + t0) // g.tW % g.tH
        tj = (first + t0) % g.tW
        first_tile[runs] = t0
        run_tiles[runs] = min(count - t0, g.tW - tj)
        image[runs] = n
        start[runs] = ti * m * g.Wo + tj * m
        run_rows[runs] = min(m, g.Ho - ti * m)
        # columns of the run's last tile inside the output (m unless at the edge)
        last_cols[runs] = min(m, g.Wo - (tj + run_tiles[runs] - 1) * m)
        pooled_start[runs] = ti * g.Wq + tj
        pooled_tiles[runs] = max(0, min(run_tiles[runs], g.Wq - tj)) if ti < g.Hq else 0
        t0 += run_tiles[runs]
        runs += 1
    for f in range(g.F):
        for j in range(a):                # columns: tmp (m, alpha) = A^T M[f]
            output_1d(M + (f * A2 + j) * T, a * T, &tmp[j * T], a * T, g.m, <int>count)
        for i in range(m):                # rows: y (m, m) = tmp A
            output_1d(&tmp[i * a * T], T, &y[i * m * T], T, g.m, <int>count)
        bias = b[f]
        if g.pool:
            for r in range(runs):
                pooled_run(y, T, first_tile[r], pooled_tiles[r], bias,
                           out + (image[r] * g.F + f) * g.Hq * g.Wq + pooled_start[r])
            continue
        for r in range(runs):
            t0 = first_tile[r]
            full = run_tiles[r] if last_cols[r] == m else run_tiles[r] - 1
            for i in range(run_rows[r]):
                row = out + (image[r] * g.F + f) * g.Ho * g.Wo + start[r] + i * g.Wo
                store_row(&y[i * m * T + t0], T, row, bias, relu, g.m, full)
                if full < run_tiles[r]:   # the tile past the right edge: its first columns
                    for j in range(last_cols[r]):
                        value = y[(i * m + j) * T + t0 + full] + bias
                        row[full * m + j] = max(value, <floating>0) if relu else value


cdef void winograd_forward_kernel(const floating[:, :, :, ::1] xp,
                                  const floating[:, :, ::1] U, const floating[::1] b,
                                  floating[:, :, :, ::1] out, floating[:, ::1] V,
                                  floating[:, ::1] M, floating[:, ::1] work, bint relu,
                                  WinogradGeometry g, int loop_threads) noexcept nogil:
    cdef Py_ssize_t block, first, count, pos, total = g.N * g.tH * g.tW
    cdef int tid
    cdef Py_ssize_t A2 = g.alpha * g.alpha
    for block in prange(g.nblocks, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        first = block * g.T
        count = min(g.T, total - first)
        transform_block(&xp[0, 0, 0, 0], &V[tid, 0], first, count, &g)
        if count < g.T:                   # the last block: zero its unused columns
            for pos in range(A2 * g.C):
                memset(&V[tid, pos * g.T + count], 0, (g.T - count) * sizeof(floating))
        for pos in range(A2):
            gemm_rowmajor(False, False, <int>g.F, <int>g.T, <int>g.C, <floating>1.0,
                          &U[pos, 0, 0], <int>g.C, &V[tid, pos * g.T], <int>(A2 * g.T),
                          <floating>0.0, &M[tid, pos * g.T], <int>(A2 * g.T))
        output_block(&M[tid, 0], &b[0], &out[0, 0, 0, 0], &work[tid, 0], first, count,
                     relu, &g)


cdef void winograd_forward_nogil(const floating[:, :, :, ::1] xp,
                                 const floating[:, :, ::1] U, const floating[::1] b,
                                 floating[:, :, :, ::1] out, floating[:, ::1] V,
                                 floating[:, ::1] M, floating[:, ::1] work, bint relu,
                                 WinogradGeometry g, int loop_threads):
    """winograd_forward_kernel without the GIL (the arrays are typed, and held, on entry)."""
    with nogil:
        winograd_forward_kernel(xp, U, b, out, V, M, work, relu, g, loop_threads)


def winograd_filters(w, m=2):
    """The filters' transform: w (F, C, 3, 3) -> U (alpha^2, F, C), alpha = m + 2,
    positions first (U[pos] is the (F, C) matrix of one GEMM)."""
    w = as_float_array(w, "w", 4)
    if w.shape[2:] != (3, 3):
        raise ValueError(f"Winograd needs 3x3 filters, got w of shape {w.shape}")
    if m not in (2, 4):
        raise ValueError(f"m must be 2 or 4 (F(m x m, 3 x 3)), got {m!r}")
    # G's rows times 24, so that every entry is an integer (1/6 or 1/24 written
    # here would be C integer division in Cython); divided in float64, and U
    # rounded once to w's dtype.
    G = {2: np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], dtype=np.float64) / 2,
         4: np.array([[6, 0, 0], [-4, -4, -4], [-4, 4, -4], [1, 2, 4], [1, -2, 4],
                      [0, 0, 24]], dtype=np.float64) / 24}[m]
    U = np.einsum("ak,fckl,bl->abfc", G, w.astype(np.float64), G)
    return np.ascontiguousarray(U.reshape((m + 2) ** 2, *w.shape[:2]), dtype=w.dtype)


def tiles_per_block(C, F, m, itemsize, total_tiles, threads):
    """Tiles in a block: V and M within BLOCK_BYTES, and enough blocks that every
    thread gets one."""
    alpha2 = (m + 2) ** 2
    T = BLOCK_BYTES // (alpha2 * (C + F) * itemsize)
    T = max(MIN_TILES_PER_BLOCK, min(MAX_TILES_PER_BLOCK, T))
    return max(1, min(T, -(-total_tiles // threads)))


def winograd_conv2d_forward(x, U, b, pad=1, *, m=2, relu=False, pool=False, threads=None):
    """3x3 stride-1 convolution through Winograd F(m x m, 3 x 3).

    x (N, C, H, W); U (alpha^2, F, C) from ``winograd_filters(w, m)``; b (F,);
    pad 0, 1 or 2 (both axes); relu: apply ReLU to the output (an epilogue, not
    a second pass). Returns out (N, F, H + 2*pad - 2, W + 2*pad - 2).

    pool=True (m = 2 only): maxpool 2x2/2 of the ReLU'd output instead, (N, F,
    Ho // 2, Wo // 2), the inference pass of a Conv -> ReLU -> MaxPool2D(2)
    block: each tile is one pooling window, so the epilogue writes one value
    per tile.
    """
    x = as_float_array(x, "x", 4)
    U = as_float_array(U, "U", 3, x.dtype)
    b = as_float_array(b, "b", 1, x.dtype)
    if m not in (2, 4):
        raise ValueError(f"m must be 2 or 4 (F(m x m, 3 x 3)), got {m!r}")
    N, C, H, W = x.shape
    A2, F, Cu = U.shape
    if A2 != (m + 2) ** 2 or Cu != C:
        raise ValueError(f"U must be winograd_filters(w, m={m}) of shape ({(m + 2) ** 2}, F, "
                         f"{C}) for x with {C} channels, got {U.shape}")
    if b.shape[0] != F:
        raise ValueError(f"b must have one bias per filter ({F}), got shape {b.shape}")
    if isinstance(pad, bool) or pad not in (0, 1, 2):
        raise ValueError(f"pad must be 0, 1 or 2 for a 3x3 kernel, got {pad!r}")
    if H + 2 * pad < 3 or W + 2 * pad < 3:
        raise ValueError(f"the padded input {H + 2 * pad}x{W + 2 * pad} (x shape {x.shape}, "
                         f"pad {pad}) is smaller than the 3x3 kernel")
    cdef WinogradGeometry g
    g.N, g.C, g.H, g.W, g.F, g.pad = N, C, H, W, F, pad
    g.m, g.alpha = m, m + 2
    g.Ho, g.Wo = H + 2 * pad - 2, W + 2 * pad - 2
    g.tH, g.tW = (g.Ho + m - 1) // m, (g.Wo + m - 1) // m
    g.Hp, g.Wp = g.tH * m + 2, g.tW * m + 2
    g.pool = bool(pool)
    g.Hq, g.Wq = g.Ho // 2, g.Wo // 2
    if g.pool and (m != 2 or g.Hq == 0 or g.Wq == 0):
        raise ValueError(f"pool=True needs m=2 and a convolution output of at least 2x2, "
                         f"got m={m} and {g.Ho}x{g.Wo}")
    total = N * g.tH * g.tW
    xp = np.zeros((N, C, g.Hp, g.Wp), dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    out = np.empty((N, F, g.Hq, g.Wq) if g.pool else (N, F, g.Ho, g.Wo), dtype=x.dtype)
    # At least a GEMM's worth of multiplies per thread, at most a block each.
    loop_threads = threads_for(threads, A2 * F * C * total // 4, 1 << 20)
    g.T = tiles_per_block(C, F, m, x.itemsize, total, loop_threads)
    g.nblocks = (total + g.T - 1) // g.T
    loop_threads = min(loop_threads, g.nblocks)
    check_blas_sizes("winograd", F, C, g.T)
    V = np.empty((loop_threads, A2 * C * g.T), dtype=x.dtype)
    M = np.empty((loop_threads, A2 * F * g.T), dtype=x.dtype)
    work = np.empty((loop_threads, (m * (m + 2) + m * m) * g.T), dtype=x.dtype)
    with blas_threads(1):
        if x.dtype == np.float32:
            winograd_forward_nogil[float](xp, U, b, out, V, M, work, bool(relu), g,
                                          loop_threads)
        else:
            winograd_forward_nogil[double](xp, U, b, out, V, M, work, bool(relu), g,
                                           loop_threads)
    return out


def winograd_conv2d_input_grad(dout, w, pad=1, *, m=2, threads=None):
    """dx (N, C, H, W) of a 3x3 stride-1 convolution with ``pad`` (0-2) and
    filters w (F, C, 3, 3), from dout (N, F, H + 2*pad - 2, W + 2*pad - 2): the
    full correlation of dout with the kernels turned by 180 degrees (filter and
    channel axes swapped), itself a 3x3 stride-1 convolution with pad 2 - pad."""
    w = as_float_array(w, "w", 4)
    if isinstance(pad, bool) or pad not in (0, 1, 2):
        raise ValueError(f"pad must be 0, 1 or 2 for a 3x3 kernel, got {pad!r}")
    dout = as_float_array(dout, "dout", 4, w.dtype)
    if dout.shape[1] != w.shape[0]:
        raise ValueError(f"dout has {dout.shape[1]} channels but w has {w.shape[0]} filters")
    rotated = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return winograd_conv2d_forward(dout, winograd_filters(rotated, m),
                                   np.zeros(w.shape[1], dtype=w.dtype), 2 - pad, m=m,
                                   threads=threads)
