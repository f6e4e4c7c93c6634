"""The Numba kernels of the block-sparse linear layer (``bsr.py``); they trust their inputs.

Block values are stored column by column (``values[(j*C + c)*R + r]``); a block row is R
output rows. Activation codes as in ``_jit.py``.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ._bsr_simd import block_tile_rows, block_vec_rows
from ._jit import OUT_ROWS, SPMM_FASTMATH, activate_block, activate_rows
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
