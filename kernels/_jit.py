"""The Numba kernels behind the linear and conv wrappers; they trust their inputs.

Kernels are flat functions over arrays that write into a preallocated output. Do not
call them directly: the wrappers in ``spmm.py`` and ``conv.py`` check shapes, dtypes,
contiguity and the CSR format first (Numba does not bounds-check).

Activation codes (an int argument, branched once per block of outputs): 0 none, 1 relu,
2 exact-erf gelu (torch ``nn.GELU()`` default).
"""

from __future__ import annotations

import functools
import math
import types

import numba
import numpy as np
from numba import types as nbtypes
from numba.extending import overload

from ._simd import (MAX_PERMUTE_VECTORS, PERMUTE_GEOMETRY, SHIFTED_ROWS, STORE_ROWS, gather_dot,
                    permute_dot, shifted_rows, store_columns, tile_row, transpose_square)

ACT_NONE, ACT_RELU, ACT_GELU, ACT_RELU6 = 0, 1, 2, 3
ACTIVATIONS = {None: ACT_NONE, "none": ACT_NONE, "relu": ACT_RELU, "gelu": ACT_GELU, "relu6": ACT_RELU6}

# Reassociation lets LLVM vectorize the row sums; no nnan/ninf so NaN and inf propagate.
# The kernels use error_model="numpy" (no ZeroDivisionError test on each float division:
# with it, LLVM does not vectorize the GELU's rational erf); their integer divisors are
# chunk and step counts the wrappers keep >= 1.
FASTMATH = {"reassoc", "contract"}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
# SpMM: no reassociation (it lets LLVM vectorize the sum over nonzeros with gathers
# instead of the batch tile); contraction into FMAs only.
SPMM_FASTMATH = {"contract"}
# Batch tile widths of the compiled SpMM variants. With 512-bit vectors, 32 measured
# fastest per column for batches above 16 (64 was no faster); 8 and 16 waste less
# padding on small batches.
TILES = (8, 16, 32)
# Nonzeros per row block in the SpMM cache blocking (~256 KiB of fp32 CSR).
BLOCK_NNZ = 32768
# Rows computed before their outputs are stored (linear layout): 16 float32 = one line.
OUT_ROWS = STORE_ROWS
# Bytes of packed input per tile group in the SpMM cache blocking (half of L2).
GROUP_BYTES = 1 << 20


# erf(x) = t * P(t^2) / Q(t^2) with t = x / ERF_CLAMP on |x| <= ERF_CLAMP (float32 erf
# rounds to +-1 beyond it). A weighted least-squares rational fit on [0, 4] (script:
# benchmarks/fit_erf.py); evaluated in float64 its error is at most 1.6e-8 (at the
# clamp), so float32 results are within an ulp of the correctly rounded erf, as
# torch's own float32 erf is. Replaces libm's erf for float32: that call, once per
# output, made a GELU layer 8x slower than the product itself (1024x256, 128 rows).
ERF_CLAMP = 4.0
ERF_P = (4.513516734091922, 11.831766084151049, 55.50666954783085, 62.69479737975626,
         98.6511745830493, 19.327399674379475, -0.8582913265021007)
ERF_Q = (1.0, 7.954743905480883, 29.12296158920498, 63.10240089311228, 85.0877238319716,
         65.39920408675484)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = ERF_P
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5 = ERF_Q


@numba.njit(cache=True, nogil=True, inline="always")
def erf_rational(x):
    """erf(x) for float64 x from the rational fit: no libm call, so loops of it vectorize.

    Exactly +-1 from +-ERF_CLAMP on, so that 1 + erf(x) is exactly 0 for large negative
    x (a GELU of -1e30 is -0, not -1e30 times the fit's error); a NaN stays NaN (the
    tests are comparisons, not min/max).
    """
    t = x * (1.0 / ERF_CLAMP)
    if t > 1.0:
        t = 1.0
    elif t < -1.0:
        t = -1.0
    z = t * t
    p = ((((((_P6 * z + _P5) * z + _P4) * z + _P3) * z + _P2) * z + _P1) * z + _P0)
    q = (((((_Q5 * z + _Q4) * z + _Q3) * z + _Q2) * z + _Q1) * z + _Q0)
    r = t * p / q
    if x >= ERF_CLAMP:
        r = 1.0
    elif x <= -ERF_CLAMP:
        r = -1.0
    return r


def gelu(v):
    """Exact-erf GELU of one value (the Numba overload below is what kernels run)."""
    return v * (0.5 + 0.5 * math.erf(v * _INV_SQRT2))


@overload(gelu, inline="always", jit_options={"cache": True, "nogil": True, "error_model": "numpy"})
def _gelu_overload(v):
    if v == nbtypes.float32:
        def gelu_f32(v):  # in float64 through the rational erf, one rounding at the end
            d = np.float64(v)
            return np.float32(d * (0.5 + 0.5 * erf_rational(d * _INV_SQRT2)))
        return gelu_f32

    def gelu_libm(v):  # float64: libm's erf (kernels at float64 are for reference use)
        return v * (0.5 + 0.5 * math.erf(v * _INV_SQRT2))
    return gelu_libm


@numba.njit(cache=True, nogil=True, inline="always")
def activate_block(a, lo, hi, act):
    """a[lo:hi] = act(a[lo:hi]) in place, a loop per activation (so each vectorizes)."""
    b = a[lo:hi]  # (indices from 0: no negative-index wraparound test to stop vectorizing)
    if act == 1:
        for i in range(b.shape[0]):
            if b[i] < 0:  # NaN stays NaN, -inf becomes 0
                b[i] = 0
    elif act == 2:
        for i in range(b.shape[0]):
            b[i] = gelu(b[i])
    elif act == 3:
        for i in range(b.shape[0]):
            if b[i] < 0:  # as Clip(0, 6) in ONNX Runtime: NaN stays NaN
                b[i] = 0
            elif b[i] > 6:
                b[i] = 6


@numba.njit(cache=True, nogil=True, inline="always")
def activation_clip(act):
    """(floor, ceiling, later): the clip a kernel applies in registers for activation ``act``
    (ReLU [0, inf), ReLU6 [0, 6], none and GELU open), and whether ``act`` still needs a pass
    of its own (GELU)."""
    if act == ACT_RELU:
        return 0.0, np.inf, False
    if act == ACT_RELU6:
        return 0.0, 6.0, False
    return -np.inf, np.inf, act != ACT_NONE


@numba.njit(cache=True, nogil=True, error_model="numpy")
def activate_rows(a, pos, rows, width, stride, act):
    """act on ``a[pos + q*stride : pos + q*stride + width]`` for q < rows, in place (a
    function of its own, so that kernels with several activation sites inline the GELU once)."""
    for q in range(rows):
        activate_block(a, pos + q * stride, pos + q * stride + width, act)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def finish_rows(a, pos, rows, width, stride, res, floor, ceiling, act):
    """Outputs a kernel stored, ``a[pos + q*stride : pos + q*stride + width]`` for q < rows, in
    place: plus ``res`` at the same positions and clipped to [floor, ceiling] (a NaN stays NaN)
    when ``res`` is not empty, then ``act`` when it needs a pass of its own (GELU): the end of a
    block the kernel computed into a buffer (a partial step, a tail), whose residual the
    registers did not add."""
    if res.size > 0:
        lo, hi = a.dtype.type(floor), a.dtype.type(ceiling)
        for q in range(rows):
            s = np.uintp(pos + q * stride)
            for t in range(np.uintp(0), np.uintp(width)):
                v = a[s + t] + res[s + t]
                v = lo if v < lo else v
                a[s + t] = hi if v > hi else v
    if activation_clip(act)[2]:
        activate_rows(a, pos, rows, width, stride, act)


@numba.njit(cache=True, nogil=True, inline="always")
def kernel_clip(act, res):
    """(floor, ceiling, later, partial floor, partial ceiling) of a conv kernel with residual
    ``res`` (empty: none): the clip of ``act`` (:func:`activation_clip`), which whole blocks
    apply in registers after adding the residual there; whether ``act`` needs a pass of its own;
    and the clip of blocks computed into a buffer first, open when a residual must come before
    it (:func:`finish_rows` adds it and clips once they are stored)."""
    floor, ceiling, later = activation_clip(act)
    if res.size > 0:
        return floor, ceiling, later, -np.inf, np.inf
    return floor, ceiling, later, floor, ceiling


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def spmv(data, indices, indptr, x, bias, act, out, bounds):
    """out[r] = act(bias[r] + sum_j data[j] * x[indices[j]]); bias has one value per row.

    ``bounds`` splits the rows into chunks of similar cost (one parallel task each).
    """
    for ch in numba.prange(bounds.shape[0] - 1):
        for r in range(bounds[ch], bounds[ch + 1]):
            out[r] = bias[r] + gather_dot(data, indices, np.uintp(indptr[r]), np.uintp(indptr[r + 1]), x)
        activate_block(out, bounds[ch], bounds[ch + 1], act)


@numba.njit(inline="always")
def all_finite(x):
    """True when no element of the contiguous float32 array ``x`` is an infinity or NaN:
    the largest magnitude's bits lie below the exponent's all-ones (an integer max,
    which vectorizes; about 0.1 us per 4096 inputs)."""
    bits = x.view(np.uint32)
    widest = np.uint32(0)
    for i in range(bits.shape[0]):
        widest = max(widest, bits[i] & np.uint32(0x7FFFFFFF))
    return widest < np.uint32(0x7F800000)


@functools.lru_cache(maxsize=None)
def ell_spmv_kernel(compact: int, nvec: int = 1, prefetch: int = 0, lanes: int = 16, flat: int = 0,
                    segment: int | None = None):
    """The sliced-ELL SpMV for padded (0) or compact (1) slot values and ``nvec`` input
    vectors per pass, prefetching ``prefetch`` slots ahead (0: not at all), over row
    groups of ``lanes`` (16: AVX-512, 8: AVX2) and windows of ``segment`` columns (None:
    twice the lanes; ``_simd.PERMUTE_GEOMETRY``), with a window per pair (``flat`` 0) or
    per slot (1; ``ell.Geometry.flat``). Cached; the kernel closes over ints only, which
    reach ``permute_dot`` as compile-time constants."""
    segment = 2 * lanes if segment is None else segment
    if (compact not in (0, 1) or not 1 <= nvec <= MAX_PERMUTE_VECTORS or prefetch < 0
            or (lanes, segment) not in PERMUTE_GEOMETRY or flat not in (0, 1)):
        raise ValueError(f"compact {compact} should be 0 or 1, nvec {nvec} in [1, {MAX_PERMUTE_VECTORS}], "
                         f"prefetch {prefetch} >= 0, (lanes, segment) {(lanes, segment)} one of "
                         f"{sorted(PERMUTE_GEOMETRY)} and flat {flat} 0 or 1")

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def ell_spmv(values, offsets, segments, slot_ptr, value_start, group_ptr, rows, x, xstride, bias, act,
                 out, ostride, bounds):
        """out[v*ostride + r] = act(bias[r] + sum over row r's nonzeros of input v) for the
        ``nvec`` inputs at ``x[v*xstride:]`` and a sliced-ELL weight (``ell.py``).

        Lane position ``g*lanes + l`` of group g is output row ``rows[g*lanes + l]``;
        ``bounds`` splits the groups into chunks of similar cost (one parallel task each).
        Each input reaches the end of the last window (``SlicedEll.padded_columns``).
        Finite inputs take the kernel that leaves padding lanes unmasked.
        """
        n_rows = bias.shape[0]
        finite = all_finite(x)
        for ch in numba.prange(bounds.shape[0] - 1):
            acc = np.empty(lanes * nvec, dtype=out.dtype)
            for g in range(bounds[ch], bounds[ch + 1]):
                if finite:
                    permute_dot(values, offsets, segments, slot_ptr, value_start, group_ptr[g],
                                group_ptr[g + 1], x, xstride, acc, compact, nvec, prefetch, lanes, segment, flat, 1)
                else:
                    permute_dot(values, offsets, segments, slot_ptr, value_start, group_ptr[g],
                                group_ptr[g + 1], x, xstride, acc, compact, nvec, prefetch, lanes, segment, flat, 0)
                r0 = g * lanes
                m = min(lanes, n_rows - r0)
                for v in range(nvec):
                    a = v * lanes
                    for lane in range(m):
                        acc[a + lane] += bias[rows[r0 + lane]]
                    activate_block(acc, a, a + m, act)
                    for lane in range(m):
                        out[v * ostride + rows[r0 + lane]] = acc[a + lane]

    return ell_spmv


def tile_group(n_in: int, tile: int, itemsize: int) -> int:
    """Tiles per group in the SpMM cache blocking: as many as fit in GROUP_BYTES (>= 1)."""
    return max(1, GROUP_BYTES // max(1, n_in * tile * itemsize))


@functools.lru_cache(maxsize=None)
def spmm_kernel(tile: int):
    """The SpMM kernel for inputs packed in batch tiles of ``tile`` columns (cached).

    The kernel closes over ints only (``tile`` reaches ``tile_row`` as a compile-time
    constant): a closure over a dispatcher would give the on-disk cache a new key in
    every process.
    """
    if tile not in TILES:
        raise ValueError(f"tile {tile} should be one of {TILES}")
    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def spmm(data, indices, indptr, xp, bias, act, out, off, s_n, s_t, s_r, s_b, head, s_h, valid, group,
             block_nnz, bounds):
        """Y[n, r, b] = act(bias[r] + sum_j data[j] * X[n, indices[j], b]) for b < valid.

        The input is packed: ``xp[n, b // tile, c, b % tile] = X[n, c, b]`` (C-contiguous,
        zero beyond ``valid``), so each nonzero scales one contiguous ``tile``-vector and
        a tile's working set is in*tile values. ``Y[n, r, b]`` is stored at
        ``out[off + n*s_n + (b // tile)*s_t + r*s_r + (r // head)*s_h + (b % tile)*s_b]``
        (``out`` is a flat buffer): the same kernel writes (batch, out) linear outputs
        (``s_r == 1``), the same split into heads of ``head`` rows laid out head-major
        (``s_h``: attention's Reshape and Transpose; ``head`` at least the rows and ``s_h``
        0 otherwise) and NCHW conv outputs (``s_b == 1``); one of ``s_r`` and ``s_b`` must
        be 1. It computes up to OUT_ROWS rows of one head before storing them, so in the
        linear layout each batch column gets one run of adjacent values (``store_columns``)
        instead of one scattered value per cache line. Work items are (image, row chunk).
        """
        n_img = xp.shape[0]
        n_tiles = xp.shape[1]
        n_chunks = bounds.shape[0] - 1
        for item in numba.prange(n_img * n_chunks):
            n = item // n_chunks
            ch = item - n * n_chunks
            base = off + n * s_n
            acc = np.empty(OUT_ROWS * tile, dtype=xp.dtype)
            r_end = bounds[ch + 1]
            # Cache blocking: a group of tiles (``group``, sized by the wrapper to stay in
            # L2) meets a block of rows holding about ``block_nnz`` nonzeros.
            for g0 in range(0, n_tiles, group):
                r_lo = bounds[ch]
                while r_lo < r_end:
                    r_hi = r_lo + 1
                    while r_hi < r_end and indptr[r_hi] - indptr[r_lo] < block_nnz:
                        r_hi += 1
                    for ti in range(g0, min(n_tiles, g0 + group)):
                        xf = xp[n, ti].reshape(-1)
                        b0 = ti * tile
                        w = min(tile, valid - b0)
                        rb = r_lo
                        while rb < r_hi:
                            nr = min(OUT_ROWS, r_hi - rb, head - rb % head)
                            for i in range(nr):
                                lo, hi = np.uintp(indptr[rb + i]), np.uintp(indptr[rb + i + 1])
                                tile_row(data, indices, lo, hi, xf, bias[rb + i], acc[i * tile:],
                                         tile)
                            activate_block(acc, 0, nr * tile, act)
                            pos = base + ti * s_t + rb * s_r + (rb // head) * s_h
                            if s_b == 1:  # batch positions contiguous (conv): row by row
                                for i in range(nr):
                                    for t in range(w):
                                        out[pos + i * s_r + t] = acc[i * tile + t]
                            else:  # rows contiguous (linear, s_r == 1): a run per column
                                store_columns(acc, tile, nr, w, out, pos, s_b)
                            rb += nr
                    r_lo = r_hi

    return spmm


@functools.lru_cache(maxsize=None)
def direct_conv_kernel(width: int):
    """The stride-1 direct conv kernel computing ``width`` output columns per step (cached)."""
    if width not in TILES:
        raise ValueError(f"width {width} should be one of {TILES}")

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def direct_conv(data, offsets, indptr, xpad, bias, act, out, res, out_off, n_img, img_in, img_out,
                    ho, wo, row_stride, bounds):
        """Y[n, r, oh, ow] = act(bias[r] + sum_j data[j] * xpad[n*img_in + offsets[j] + oh*row_stride + ow]
        (+ res[i] when ``res`` is not empty, i the output's own index)).

        ``xpad`` is the flat zero-padded input: images of ``img_in`` values, rows of
        ``row_stride`` values, wide enough that whole ``width``-column steps past ``wo``
        stay inside, and with rows below the image so that whole SHIFTED_ROWS-row steps
        past ``ho`` do too (the extra outputs are dropped). ``offsets[j]`` is the input offset
        of nonzero j's (channel, tap). ``Y[n, r, oh, ow]`` is stored at
        ``out[out_off + n*img_out + (r*ho + oh)*wo + ow]``. Work items are (image, row chunk);
        each block of SHIFTED_ROWS x width outputs is computed for every row of the chunk in
        turn, so its input block is reused from the cache. Whole blocks are stored straight
        from the registers.
        """
        n_chunks = bounds.shape[0] - 1
        n_steps = (wo + width - 1) // width
        for item in numba.prange(n_img * n_chunks):
            n = item // n_chunks
            ch = item - n * n_chunks
            acc = np.empty(SHIFTED_ROWS * width, dtype=xpad.dtype)
            floor, ceiling, later, pfloor, pceiling = kernel_clip(act, res)
            finish = later or res.size > 0
            none = res[:0]
            x0 = n * img_in
            for oh0 in range(0, ho, SHIFTED_ROWS):
                rows = min(SHIFTED_ROWS, ho - oh0)
                for step in range(n_steps):
                    ow0 = step * width
                    w = min(width, wo - ow0)
                    whole = rows == SHIFTED_ROWS and w == width
                    for r in range(bounds[ch], bounds[ch + 1]):
                        lo, hi = np.uintp(indptr[r]), np.uintp(indptr[r + 1])
                        pos = out_off + n * img_out + (r * ho + oh0) * wo + ow0
                        if whole:
                            shifted_rows(data, offsets, lo, hi, xpad, x0 + oh0 * row_stride + ow0,
                                         row_stride, bias[r], out, pos, wo, res, floor, ceiling, width)
                            if later:
                                activate_rows(out, pos, SHIFTED_ROWS, width, wo, act)
                            continue
                        shifted_rows(data, offsets, lo, hi, xpad, x0 + oh0 * row_stride + ow0,
                                     row_stride, bias[r], acc, 0, width, none, pfloor, pceiling, width)
                        for q in range(rows):
                            for t in range(w):
                                out[pos + q * wo + t] = acc[q * width + t]
                        if finish:
                            finish_rows(out, pos, rows, w, wo, res, floor, ceiling, act)

    return direct_conv


@functools.lru_cache(maxsize=None)
def pointwise_conv_kernel(width: int):
    """The 1x1 conv kernel computing SHIFTED_ROWS * ``width`` positions per step (cached)."""
    if width not in TILES:
        raise ValueError(f"width {width} should be one of {TILES}")

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def pointwise_conv(data, offsets, indptr, x, img_in, p_full, tail_x, tail, bias, act,
                       out, res, out_off, n_img, img_out, p_out, bounds):
        """Y[n, r, p] = act(bias[r] + sum_j data[j] * X[n, c_j, p] (+ res[i] when ``res`` is not
        empty, i the output's own index)) for a 1x1 conv.

        ``x`` is the flat input, images of ``img_in`` values, with ``offsets[j]`` the start of
        nonzero j's channel (c_j * positions): no copy, no padding. Positions [0, p_full) run
        in whole steps of SHIFTED_ROWS * width read from ``x``; the last ``tail`` positions
        as one whole step from ``tail_x``, the same input from position ``p_full`` on (or a
        copy of it), of whose values only the first ``tail`` per row are stored: the caller
        makes a whole step readable from every channel start there (reading into the next
        channel, and past the last into slack). ``Y[n, r, p]`` is stored at
        ``out[out_off + n*img_out + r*p_out + p]``. Work items are (image, row chunk); each
        step's input block is reused by every row of the chunk.
        """
        step = SHIFTED_ROWS * width
        n_chunks = bounds.shape[0] - 1
        n_steps = p_full // step
        for item in numba.prange(n_img * n_chunks):
            n = item // n_chunks
            ch = item - n * n_chunks
            acc = np.empty(step, dtype=x.dtype)
            floor, ceiling, later, pfloor, pceiling = kernel_clip(act, res)
            finish = later or res.size > 0
            none = res[:0]
            r0, r1 = bounds[ch], bounds[ch + 1]
            for s in range(n_steps):
                for r in range(r0, r1):
                    lo, hi = np.uintp(indptr[r]), np.uintp(indptr[r + 1])
                    pos = out_off + n * img_out + r * p_out + s * step
                    # A whole step's positions are adjacent in the output: stored from the registers.
                    shifted_rows(data, offsets, lo, hi, x, n * img_in + s * step, width, bias[r], out, pos, width,
                                 res, floor, ceiling, width)
                    if later:
                        activate_rows(out, pos, 1, step, 0, act)
            if tail > 0:
                for r in range(r0, r1):
                    lo, hi = np.uintp(indptr[r]), np.uintp(indptr[r + 1])
                    shifted_rows(data, offsets, lo, hi, tail_x, n * img_in, width, bias[r], acc, 0, width,
                                 none, pfloor, pceiling, width)
                    pos = out_off + n * img_out + r * p_out + p_full
                    for t in range(tail):
                        out[pos + t] = acc[t]
                    if finish:
                        finish_rows(out, pos, 1, tail, 0, res, floor, ceiling, act)

    return pointwise_conv


@numba.njit(parallel=True, cache=True, nogil=True)
def pad_input(x, ph, pw, xpad):
    """xpad[n, c, i, j] = x[n, c, i - ph, j - pw] inside x, zero elsewhere; xpad is (N, C, Hp, Wx)."""
    n_img, c_in, height, width = x.shape
    hp, wx = xpad.shape[2], xpad.shape[3]
    for item in numba.prange(n_img * c_in):
        n = item // c_in
        c = item - n * c_in
        src = x[n, c]
        dst = xpad[n, c]
        for i in range(hp):
            row = dst[i]
            ih = i - ph
            if ih < 0 or ih >= height:
                for j in range(wx):
                    row[j] = 0
            else:
                for j in range(pw):
                    row[j] = 0
                for j in range(width):
                    row[pw + j] = src[ih, j]
                for j in range(pw + width, wx):
                    row[j] = 0


@numba.njit(parallel=True, cache=True, nogil=True)
def pad_phases(x, ph, pw, sh, sw, xq):
    """xq[n, a*sw + b, c, i, j] = x[n, c, sh*i + a - ph, sw*j + b - pw] inside x, zero elsewhere:
    the zero-padded input split into sh*sw phase planes; xq is (N, sh*sw, C, Hq, Wq)."""
    n_img, c_in, height, width = x.shape
    hq, wq = xq.shape[3], xq.shape[4]
    n_phase = sh * sw
    for item in numba.prange(n_img * n_phase * c_in):
        n = item // (n_phase * c_in)
        rest = item - n * n_phase * c_in
        phase = rest // c_in
        c = rest - phase * c_in
        a = phase // sw
        b = phase - a * sw
        src = x[n, c]
        dst = xq[n, phase, c]
        for i in range(hq):
            row = dst[i]
            ih = sh * i + a - ph
            if ih < 0 or ih >= height:
                for j in range(wq):
                    row[j] = 0
            else:
                for j in range(wq):
                    iw = sw * j + b - pw
                    row[j] = src[ih, iw] if 0 <= iw < width else 0


@numba.njit(parallel=True, cache=True, nogil=True)
def subsample(x, sh, sw, out):
    """out[n, c, i, j] = x[n, c, sh*i, sw*j]: the input a strided 1x1 conv without padding
    reads; out is (N, C, Ho, Wo) with sh*(Ho-1) < H and sw*(Wo-1) < W."""
    c_in, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    for item in numba.prange(out.shape[0] * c_in * ho):  # one output row each
        plane = item // ho
        n = plane // c_in
        c = plane - n * c_in
        i = item - plane * ho
        src = x[n, c, sh * i]
        dst = out[n, c, i]
        for j in range(wo):
            dst[j] = src[sw * j]


# Input columns per pack_rows work item: a (tile x PACK_COLUMNS) block of x is written
# as one contiguous (PACK_COLUMNS x tile) block of xp.
PACK_COLUMNS = 64


@functools.lru_cache(maxsize=None)
def pack_rows_kernel(lanes: int):
    """The input packing of the SpMM, transposing ``lanes`` x ``lanes`` blocks in registers
    (``lanes``: float32 values per vector register of the variant; cached). Against a loop of
    scalar copies: 128 x 768 float32 13 against 99-150 us, 128 x 3072 165 against 450 us
    (one thread, Zen 4)."""
    if lanes not in (4, 8, 16):
        raise ValueError(f"lanes {lanes} should be 4, 8 or 16")
    half = lanes // 2

    @numba.njit(parallel=True, cache=True, nogil=True)
    def pack_rows(x, xp):
        """xp[0, b // T, c, b % T] = x[b, c] (zero for padded b); x is (B, in) C-contiguous."""
        batch, n_in = x.shape
        n_tiles, tile = xp.shape[1], xp.shape[3]
        xf = xp.reshape(-1)
        xs = x.reshape(-1)
        n_blocks = (n_in + PACK_COLUMNS - 1) // PACK_COLUMNS
        step = lanes if tile % lanes == 0 else half if tile % half == 0 else 1
        for job in numba.prange(n_tiles * n_blocks):
            ti = job // n_blocks
            c0 = (job - ti * n_blocks) * PACK_COLUMNS
            c1 = min(n_in, c0 + PACK_COLUMNS)
            b0 = ti * tile
            w = min(tile, batch - b0)
            base = ti * n_in * tile
            for t0 in range(0, tile, step):
                for cb in range(c0, c1, step):
                    whole = t0 + step <= w and cb + step <= c1
                    if whole and step == lanes:
                        transpose_square(xs, (b0 + t0) * n_in + cb, n_in, xf, base + cb * tile + t0, tile, lanes)
                    elif whole and step == half:
                        transpose_square(xs, (b0 + t0) * n_in + cb, n_in, xf, base + cb * tile + t0, tile, half)
                    else:  # the edges: rows past the batch are zero
                        for t in range(t0, t0 + step):
                            for c in range(cb, min(cb + step, c1)):
                                xf[base + c * tile + t] = xs[(b0 + t) * n_in + c] if t < w else 0

    return pack_rows


@functools.lru_cache(maxsize=None)
def serial(kernel):
    """The single-threaded twin of a ``parallel=True`` kernel (prange runs as range).

    Compiled from the same Python function under its own qualified name, so its
    on-disk cache entry does not collide with the parallel version's. Used for calls
    too small to repay a parallel launch.
    """
    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial",
                              f.__defaults__, f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__module__ = f.__module__
    twin.__doc__ = f.__doc__
    opts = {k: kernel.targetoptions[k] for k in ("fastmath", "error_model") if k in kernel.targetoptions}
    return numba.njit(cache=True, nogil=True, **opts)(twin)
