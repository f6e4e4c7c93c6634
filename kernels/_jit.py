"""The Numba kernels behind the linear and conv wrappers; they trust their inputs.

Kernels are flat functions over arrays that write into a preallocated output. Do not
call them directly: the wrappers in ``spmm.py`` and ``conv.py`` check shapes, dtypes,
contiguity and the CSR format first (Numba does not bounds-check).

Activation codes (an int argument, branched once per output value): 0 none, 1 relu,
2 exact-erf gelu (torch ``nn.GELU()`` default).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from ._simd import axpy

ACT_NONE, ACT_RELU, ACT_GELU = 0, 1, 2
ACTIVATIONS = {None: ACT_NONE, "none": ACT_NONE, "relu": ACT_RELU, "gelu": ACT_GELU}

# Reassociation lets LLVM vectorize the row sums; no nnan/ninf so NaN and inf propagate.
FASTMATH = {"reassoc", "contract"}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
# SpMM: no reassociation (it lets LLVM vectorize the sum over nonzeros with gathers
# instead of the batch tile); contraction into FMAs only.
SPMM_FASTMATH = {"contract"}
# Widest batch tile of each compiled SpMM variant; SMALL_TILE also covers tails.
TILES = (8, 16, 32)
SMALL_TILE = 8
# Independent accumulator sets per tile row (hides floating-point add latency).
CHAINS = 4


@numba.njit(cache=True, nogil=True, inline="always")
def _activate(v, act):
    if act == 1:
        return v * 0 if v < 0 else v
    if act == 2:
        return v * (0.5 + 0.5 * math.erf(v * _INV_SQRT2))
    return v


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def spmv(data, indices, indptr, x, bias, act, out, bounds):
    """out[r] = act(bias[r] + sum_j data[j] * x[indices[j]]); bias has one value per row.

    ``bounds`` splits the rows into chunks of similar cost (one parallel task each).
    """
    for ch in numba.prange(bounds.shape[0] - 1):
        for r in range(bounds[ch], bounds[ch + 1]):
            s = bias[r]
            for j in range(indptr[r], indptr[r + 1]):
                s += data[j] * x[np.uintp(indices[j])]
            out[r] = _activate(s, act)


@numba.njit(cache=True, nogil=True, fastmath=SPMM_FASTMATH)
def _row_generic(data, indices, lo, hi, xf, b0, stride, w, init, acc):
    """acc[:w] = init + sum_{j in [lo, hi)} data[j] * xf[indices[j]*stride + b0 : ... + w]."""
    for t in range(w):
        acc[t] = init
    ub0, ustride = np.uintp(b0), np.uintp(stride)
    for j in range(lo, hi):
        v = data[j]
        p = np.uintp(indices[j]) * ustride + ub0
        for t in range(w):
            acc[t] += v * xf[p + np.uintp(t)]


@functools.lru_cache(maxsize=None)
def _row_vector(tile: int):
    """The row kernel of width ``tile``: like _row_generic with explicit SIMD, CHAINS sums."""
    n_acc = CHAINS * tile

    @numba.njit(cache=True, nogil=True, fastmath=SPMM_FASTMATH)
    def row(data, indices, lo, hi, xf, b0, stride, init, acc):
        for t in range(n_acc):
            acc[t] = 0
        ub0, ustride = np.uintp(b0), np.uintp(stride)
        j = lo
        # CHAINS (= 4) independent accumulators hide the add latency.
        while j + 4 <= hi:
            axpy(acc, 0, xf, np.uintp(indices[j]) * ustride + ub0, data[j], tile)
            axpy(acc, tile, xf, np.uintp(indices[j + 1]) * ustride + ub0, data[j + 1], tile)
            axpy(acc, 2 * tile, xf, np.uintp(indices[j + 2]) * ustride + ub0, data[j + 2], tile)
            axpy(acc, 3 * tile, xf, np.uintp(indices[j + 3]) * ustride + ub0, data[j + 3], tile)
            j += 4
        while j < hi:
            axpy(acc, 0, xf, np.uintp(indices[j]) * ustride + ub0, data[j], tile)
            j += 1
        for t in range(tile):
            acc[t] = init + ((acc[t] + acc[tile + t]) + (acc[2 * tile + t] + acc[3 * tile + t]))

    return row


@functools.lru_cache(maxsize=None)
def spmm_kernel(tile: int):
    """The SpMM kernel whose widest batch tile is ``tile`` (one of TILES; cached)."""
    row_big = _row_vector(tile)
    row_small = _row_vector(SMALL_TILE)
    n_acc = CHAINS * tile

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=SPMM_FASTMATH)
    def spmm(data, indices, indptr, xt, bias, act, out, off, s_n, s_r, s_b, valid, bounds):
        """Y[n, r, b] = act(bias[r] + sum_j data[j] * xt[n, indices[j], b]) for b < valid.

        ``xt`` is (N, in, B) C-contiguous, so each nonzero scales one contiguous batch
        vector; columns ``valid..B`` are padding and are not stored. ``Y[n, r, b]`` is
        stored at ``out[off + n*s_n + r*s_r + b*s_b]`` (``out`` is a flat buffer): the
        same kernel writes (batch, out) linear outputs and NCHW conv outputs. Work items
        are (image, row chunk). The batch is covered by tiles of ``tile`` columns, then
        of SMALL_TILE, then one scalar tail, each keeping its accumulators in registers.
        """
        n_img = xt.shape[0]
        width = xt.shape[2]
        n_chunks = bounds.shape[0] - 1
        for item in numba.prange(n_img * n_chunks):
            n = item // n_chunks
            ch = item - n * n_chunks
            xf = xt[n].reshape(-1)
            base = off + n * s_n
            acc = np.empty(n_acc, dtype=xt.dtype)
            b0 = 0
            while b0 < valid:
                if b0 + tile <= width:
                    w = tile
                elif b0 + SMALL_TILE <= width:
                    w = SMALL_TILE
                else:
                    w = width - b0
                for r in range(bounds[ch], bounds[ch + 1]):
                    lo, hi = indptr[r], indptr[r + 1]
                    if w == tile:
                        row_big(data, indices, lo, hi, xf, b0, width, bias[r], acc)
                    elif w == SMALL_TILE:
                        row_small(data, indices, lo, hi, xf, b0, width, bias[r], acc)
                    else:
                        _row_generic(data, indices, lo, hi, xf, b0, width, w, bias[r], acc)
                    pos = base + r * s_r + b0 * s_b
                    for t in range(min(w, valid - b0)):
                        out[pos + t * s_b] = _activate(acc[t], act)
                b0 += w

    return spmm


@numba.njit(parallel=True, cache=True, nogil=True)
def im2col(x, n0, c0, kh, kw, sh, sw, ph, pw, dh, dw, cols):
    """cols[m, (c-c0)*kh*kw + i*kw + j, oh*Wo + ow] = x[n0+m, c, oh*sh-ph+i*dh, ow*sw-pw+j*dw].

    Zero where the input position falls in the padding. ``x`` is NCHW C-contiguous;
    ``cols`` is (M, C'*kh*kw, Ho*Wo) with Ho, Wo implied by its last dimension.
    """
    n_img, k_rows, _ = cols.shape
    height, wid = x.shape[2], x.shape[3]
    wo = (wid + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    ho = cols.shape[2] // wo if wo > 0 else 0
    for item in numba.prange(n_img * k_rows):
        m = item // k_rows
        k = item - m * k_rows
        c = c0 + k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        xc = x[n0 + m, c]
        row = cols[m, k]
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            dst = oh * wo
            if ih < 0 or ih >= height:
                for ow in range(wo):
                    row[dst + ow] = 0
            else:
                for ow in range(wo):
                    iw = ow * sw - pw + j * dw
                    if iw >= 0 and iw < wid:
                        row[dst + ow] = xc[ih, iw]
                    else:
                        row[dst + ow] = 0
