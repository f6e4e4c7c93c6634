"""The Numba kernels of the block-sparse linear layer (``bsr.py``); they trust their inputs.

Block values are stored column by column (``values[(j*C + c)*R + r]``); a block row is R
output rows. Activation codes as in ``_jit.py``.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ._bsr_simd import block_shifted_rows, block_tile_rows, block_vec_rows
from ._jit import OUT_ROWS, SPMM_FASTMATH, activate_block, activate_rows, finish_rows, kernel_clip
from ._simd import store_columns

# Block sides the kernels are compiled for (vectors of R or C lanes).
SIDES = (1, 2, 4, 8, 16)


def _check_block(r: int, c: int) -> None:
    if r not in SIDES or c not in SIDES or r * c == 1:
        raise ValueError(f"block {r}x{c}: both sides should be one of {SIDES}, not both 1")


@functools.lru_cache(maxsize=None)
def bsr_spmv_kernel(r: int, c: int):
    """The BSR SpMV for r x c blocks (cached); the kernel closes over ints only."""
    _check_block(r, c)

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def bsr_spmv(values, indices, indptr, x, bias, act, out, bounds):
        """out[br*r + i] = act(bias + sum over block row br's blocks of block column * x): one
        parallel task per chunk of block rows (``bounds``)."""
        for ch in numba.prange(bounds.shape[0] - 1):
            for br in range(bounds[ch], bounds[ch + 1]):
                block_vec_rows(values, indices, np.uintp(indptr[br]), np.uintp(indptr[br + 1]), x, bias, br * r,
                               out, r, c)
            activate_block(out, bounds[ch] * r, bounds[ch + 1] * r, act)

    return bsr_spmv


@functools.lru_cache(maxsize=None)
def bsr_spmm_kernel(r: int, c: int, width: int, rows: int, chains: int):
    """The BSR SpMM over packed batch tiles of ``width`` columns, ``rows`` (dividing r) of a
    block row's outputs at a time, ``chains`` accumulator sets (cached)."""
    _check_block(r, c)
    if rows < 1 or r % rows or width not in (4, 8, 16, 32):
        raise ValueError(f"rows {rows} should divide {r} and width {width} be one of 4, 8, 16, 32")

    group = max(1, OUT_ROWS // r)  # block rows accumulated per store: OUT_ROWS output rows (R <= OUT_ROWS)

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def bsr_spmm(values, indices, indptr, xp, bias, act, out, n_out, valid, bounds):
        """Y[b, o] = act(bias[o] + sum over the blocks of o's block row) for b < valid, with the
        input packed as for the CSR SpMM (``xp[0, b // width, k, b % width] = X[b, k]``) and Y
        stored at ``out[b*n_out + o]``. Work items are chunks of block rows (``bounds``); as in
        the CSR SpMM, OUT_ROWS output rows (``group`` block rows) are accumulated before one
        transposing store (``store_columns``): with 1 x C blocks a store per block row cost
        more than its multiply-adds."""
        n_tiles = xp.shape[1]
        for ch in numba.prange(bounds.shape[0] - 1):
            acc = np.empty(group * r * width, dtype=xp.dtype)
            for ti in range(n_tiles):
                xf = xp[0, ti].reshape(-1)
                b0 = ti * width
                w = min(width, valid - b0)
                for g0 in range(bounds[ch], bounds[ch + 1], group):
                    n_br = min(group, bounds[ch + 1] - g0)
                    for k in range(n_br):
                        br = g0 + k
                        lo, hi = np.uintp(indptr[br]), np.uintp(indptr[br + 1])
                        for part in range(0, r, rows):
                            block_tile_rows(values, indices, lo, hi, xf, bias, br * r + part, part,
                                            acc[(k * r + part) * width:], r, c, rows, width, chains)
                    if act != 0:
                        activate_rows(acc, 0, 1, n_br * r * width, 0, act)
                    store_columns(acc, width, n_br * r, w, out, b0 * n_out + g0 * r, n_out)

    return bsr_spmm


def _check_conv_block(r: int, rr: int, q: int, width: int) -> None:
    if r not in SIDES or r == 1 or rr < 1 or r % rr or q < 1 or width not in (8, 16, 32):
        raise ValueError(f"block {r}x1 with {rr} rows per pass, {q} shifted rows, width {width}: "
                         f"r should be one of {SIDES[1:]}, rr divide r, width be 8, 16 or 32")


@functools.lru_cache(maxsize=None)
def block_direct_conv_kernel(r: int, rr: int, q: int, width: int):
    """The direct conv over r x 1 blocks: ``rr`` channels and ``q`` output rows of ``width``
    columns per step (cached)."""
    _check_conv_block(r, rr, q, width)

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def block_direct_conv(values, offsets, indptr, xpad, bias, act, out, res, n_img, img_in, img_out, ho, wo,
                          row_stride, bounds):
        """Y[n, o, oh, ow] = act(bias[o] + sum over block row o // r's blocks j of
        values[j*r + o % r] * xpad[n*img_in + offsets[j] + oh*row_stride + ow] (+ res at the
        output's own index when ``res`` is not empty)), stored at
        ``out[n*img_out + (o*ho + oh)*wo + ow]``; ``xpad`` as for the CSR direct conv, with rows
        below the image for whole ``q``-row steps. Work items are (image, chunk of block rows);
        whole steps are stored straight from the registers."""
        n_chunks = bounds.shape[0] - 1
        n_steps = (wo + width - 1) // width
        plane = ho * wo
        for item in numba.prange(n_img * n_chunks):
            n = item // n_chunks
            ch = item - n * n_chunks
            acc = np.empty(rr * q * width, dtype=xpad.dtype)
            floor, ceiling, later, pfloor, pceiling = kernel_clip(act, res)
            finish = later or res.size > 0
            none = res[:0]
            x0 = n * img_in
            for oh0 in range(0, ho, q):
                rows = min(q, ho - oh0)
                for step in range(n_steps):
                    ow0 = step * width
                    w = min(width, wo - ow0)
                    whole = rows == q and w == width
                    start = x0 + oh0 * row_stride + ow0
                    for br in range(bounds[ch], bounds[ch + 1]):
                        lo, hi = np.uintp(indptr[br]), np.uintp(indptr[br + 1])
                        for part in range(0, r, rr):
                            o = br * r + part
                            pos = n * img_out + o * plane + oh0 * wo + ow0
                            if whole:
                                block_shifted_rows(values, offsets, lo, hi, xpad, bias, start, row_stride, o, part,
                                                   out, pos, wo, plane, res, floor, ceiling, r, rr, q, width)
                                if later:
                                    for k in range(rr):
                                        activate_rows(out, pos + k * plane, q, width, wo, act)
                                continue
                            block_shifted_rows(values, offsets, lo, hi, xpad, bias, start, row_stride, o, part,
                                               acc, 0, width, q * width, none, pfloor, pceiling, r, rr, q, width)
                            for k in range(rr):
                                for i in range(rows):
                                    for t in range(w):
                                        out[pos + k * plane + i * wo + t] = acc[(k * q + i) * width + t]
                                if finish:
                                    finish_rows(out, pos + k * plane, rows, w, wo, res, floor, ceiling, act)

    return block_direct_conv


@functools.lru_cache(maxsize=None)
def block_pointwise_conv_kernel(r: int, rr: int, q: int, width: int):
    """The 1x1 conv over r x 1 blocks: ``rr`` channels and ``q * width`` positions per step (cached)."""
    _check_conv_block(r, rr, q, width)

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH, error_model="numpy")
    def block_pointwise_conv(values, offsets, indptr, x, img_in, p_full, tail_x, tail, bias,
                             act, out, res, n_img, img_out, p_out, bounds):
        """Y[n, o, p] = act(bias[o] + sum over block row o // r's blocks j of values[j*r + o % r]
        * X[n, c_j, p] (+ res at the output's own index when ``res`` is not empty)) for a 1x1
        conv, stored at ``out[n*img_out + o*p_out + p]``. ``x``, ``offsets`` and ``tail_x`` as
        for the CSR pointwise conv, with steps of ``q * width`` positions."""
        step = q * width
        n_chunks = bounds.shape[0] - 1
        n_steps = p_full // step
        for item in numba.prange(n_img * n_chunks):
            n = item // n_chunks
            ch = item - n * n_chunks
            acc = np.empty(rr * step, dtype=x.dtype)
            floor, ceiling, later, pfloor, pceiling = kernel_clip(act, res)
            finish = later or res.size > 0
            none = res[:0]
            r0, r1 = bounds[ch], bounds[ch + 1]
            for s in range(n_steps):
                for br in range(r0, r1):
                    lo, hi = np.uintp(indptr[br]), np.uintp(indptr[br + 1])
                    for part in range(0, r, rr):
                        o = br * r + part
                        pos = n * img_out + o * p_out + s * step
                        block_shifted_rows(values, offsets, lo, hi, x, bias, n * img_in + s * step, width, o, part,
                                           out, pos, width, p_out, res, floor, ceiling, r, rr, q, width)
                        if later:
                            for k in range(rr):
                                activate_rows(out, pos + k * p_out, 1, step, 0, act)
            if tail > 0:
                for br in range(r0, r1):
                    lo, hi = np.uintp(indptr[br]), np.uintp(indptr[br + 1])
                    for part in range(0, r, rr):
                        o = br * r + part
                        block_shifted_rows(values, offsets, lo, hi, tail_x, bias, n * img_in, width, o, part,
                                           acc, 0, width, step, none, pfloor, pceiling, r, rr, q, width)
                        pos = n * img_out + o * p_out + p_full
                        for k in range(rr):
                            for t in range(tail):
                                out[pos + k * p_out + t] = acc[k * step + t]
                            if finish:
                                finish_rows(out, pos + k * p_out, 1, tail, 0, res, floor, ceiling, act)

    return block_pointwise_conv
