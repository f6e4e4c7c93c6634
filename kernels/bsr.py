"""Block-sparse weights (BSR) and the block-sparse linear layer.

A :class:`BSR` holds R x C blocks: ``values`` (nblocks, R, C), and a block pattern that is a
CSR over block rows and block columns (``indices``: block column of each block, ``indptr``:
per block row), validated like a CSR (``check_format``). A weight pruned in whole blocks
(``sparsify prune --block RxC``) stores one index per block instead of one per weight, and
its kernels reuse each loaded input for R outputs (R x 1 blocks) or read C adjacent inputs
with one vector load (1 x C blocks at batch 1).

:class:`SparseBlockLinear` computes ``act(x @ W.T + b)``: a single row through the BSR SpMV,
several through the BSR SpMM over the same packed input tiles as the CSR SpMM.
"""

from __future__ import annotations

import numpy as np

from . import _bsr_jit, _jit, isa
from .buffers import Scratch
from .csr import CSR, DATA_DTYPES, choose_index_dtypes, kernel_array
from .errors import CSRFormatError, KernelArgumentError
from .spmm import RowChunks, activation_code, launch, linear_output, pack_lanes, pick_tile, prepare_bias

SIDES = _bsr_jit.SIDES


class BSR:
    """A block-sparse-row matrix of ``shape`` in ``blocksize`` (R, C) blocks.

    Block row ``i`` (output rows ``i*R .. i*R+R-1``) holds the blocks
    ``values[indptr[i]:indptr[i+1]]`` at block columns ``indices[indptr[i]:indptr[i+1]]``
    (input columns ``j*C .. j*C+C-1``). ``pattern`` is that block structure as a CSR (one
    placeholder value per block), so the index checks are the CSR's: cheap ones at
    construction, O(blocks) ones on ``check_format(full=True)``.
    """

    __slots__ = ("values", "pattern", "shape", "blocksize", "_kernel_values")

    def __init__(self, values, indices, indptr, shape: tuple[int, int], blocksize: tuple[int, int]) -> None:
        try:
            rows, cols = (int(s) for s in shape)
            r, c = (int(s) for s in blocksize)
        except (TypeError, ValueError):
            raise CSRFormatError(f"shape {shape!r} and blocksize {blocksize!r} should be pairs of integers") from None
        if r < 1 or c < 1 or rows < 0 or cols < 0 or rows % r or cols % c:
            raise CSRFormatError(f"blocksize ({r}, {c}) should be positive and divide shape ({rows}, {cols})")
        values = np.ascontiguousarray(values)
        if values.dtype not in DATA_DTYPES:
            raise CSRFormatError(f"block values dtype {values.dtype} should be float32 or float64", array="data")
        if values.ndim != 3 or values.shape[1:] != (r, c):
            raise CSRFormatError(f"block values shape {list(values.shape)} should be [blocks, {r}, {c}]", array="data")
        self.shape, self.blocksize = (rows, cols), (r, c)
        self.values = values
        self.values.flags.writeable = False
        self.pattern = CSR(np.zeros(values.shape[0], values.dtype), indices, indptr, (rows // r, cols // c))
        self._kernel_values = None

    @property
    def nblocks(self) -> int:
        return int(self.values.shape[0])

    @property
    def nnz(self) -> int:
        """Stored values (whole blocks, zeros inside them included)."""
        return int(self.values.size)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def density(self) -> float:
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.pattern.indices.nbytes + self.pattern.indptr.nbytes

    @property
    def fully_checked(self) -> bool:
        return self.pattern.fully_checked

    def __repr__(self) -> str:
        r, c = self.blocksize
        return f"BSR(shape={self.shape}, blocksize={r}x{c}, blocks={self.nblocks}, density={self.density:.4f})"

    def check_format(self, full: bool = False) -> None:
        """Raise CSRFormatError unless the block pattern's invariants hold (``CSR.check_format``,
        in block rows and block columns)."""
        try:
            self.pattern.check_format(full)
        except CSRFormatError as exc:
            # The pattern's rows and columns are block rows and block columns.
            text = str(exc).replace(" row ", " block row ").replace("column index", "block column index")
            raise CSRFormatError(f"block pattern: {text}", array=exc.array) from None

    def kernel_values(self) -> np.ndarray:
        """The values as the kernels read them: block by block, each column of a block contiguous."""
        if self._kernel_values is None:
            self._kernel_values = np.ascontiguousarray(self.values.transpose(0, 2, 1)).reshape(-1)
        return self._kernel_values

    @classmethod
    def from_dense(cls, w, blocksize: tuple[int, int], index_dtype=None) -> "BSR":
        """The BSR of a 2-D array: every block holding a nonzero is stored (its zeros included)."""
        w = np.asarray(w)
        if w.ndim != 2 or w.dtype not in DATA_DTYPES:
            raise CSRFormatError(f"weight should be a 2-D float32/float64 array, got {w.dtype} {w.shape}")
        r, c = (int(s) for s in blocksize)
        rows, cols = w.shape
        if r < 1 or c < 1 or rows % r or cols % c:
            raise CSRFormatError(f"blocksize ({r}, {c}) should divide shape ({rows}, {cols})")
        blocks = w.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3)
        keep = (blocks != 0).any(axis=(2, 3))
        brow, bcol = np.nonzero(keep)
        idx_dtype, ptr_dtype = choose_index_dtypes((rows // r, cols // c), brow.size)
        indptr = np.zeros(rows // r + 1, np.int64)
        np.cumsum(np.bincount(brow, minlength=rows // r), out=indptr[1:])
        out = cls(blocks[brow, bcol], bcol.astype(index_dtype or idx_dtype), indptr.astype(ptr_dtype), w.shape,
                  (r, c))
        out.pattern.fully_checked = True
        return out

    def to_dense(self) -> np.ndarray:
        rows, cols = self.shape
        r, c = self.blocksize
        dense = np.zeros((rows // r, cols // c, r, c), self.dtype)
        brow = np.repeat(np.arange(rows // r), np.diff(self.pattern.indptr))
        dense[brow, self.pattern.indices] = self.values
        return dense.transpose(0, 2, 1, 3).reshape(rows, cols)

    def to_csr(self) -> CSR:
        """The CSR of the same matrix (zeros inside blocks dropped), built from the blocks alone
        (memory in proportion to the stored values, not to the shape)."""
        r, c = self.blocksize
        nblocks = self.nblocks
        brow = np.repeat(np.arange(self.shape[0] // r, dtype=np.int64), np.diff(self.pattern.indptr))
        rows = (brow[:, None, None] * r + np.arange(r)[None, :, None]).repeat(c, axis=2).reshape(-1)
        cols = (self.pattern.indices.astype(np.int64)[:, None, None] * c
                + np.arange(c)[None, None, :]).repeat(r, axis=1).reshape(-1)
        values = self.values.reshape(-1)
        keep = values != 0
        order = np.lexsort((cols[keep], rows[keep])) if nblocks else np.zeros(0, np.int64)
        rows, cols, values = rows[keep][order], cols[keep][order], values[keep][order]
        indptr = np.zeros(self.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=self.shape[0]), out=indptr[1:])
        idx_dtype, ptr_dtype = choose_index_dtypes(self.shape, values.size)
        out = CSR(values, cols.astype(idx_dtype), indptr.astype(ptr_dtype), self.shape)
        out.fully_checked = self.fully_checked  # sorted, in range, counted from a checked pattern
        return out


def kernel_block(blocksize: tuple[int, int]) -> bool:
    """Whether the block kernels are compiled for ``blocksize`` (both sides in SIDES, not 1x1)."""
    r, c = blocksize
    return r in SIDES and c in SIDES and r * c > 1


def spmm_geometry(r: int, variant: str, widest: int = 32) -> tuple[int, int, int]:
    """(tile width, rows per pass, accumulator chains) of the BSR SpMM: the widest tile (at
    most ``widest``) whose accumulators for a whole block row (rows x width/lanes vector
    registers) fit in half the register file (else as many of the block's rows as fit at
    the narrowest tile), and as many chains as keep about eight accumulators in flight
    within that budget."""
    lanes = isa.VECTOR_BYTES[variant] // 4
    budget = 16 if variant == "avx512" else 8  # half of 32 zmm; all but half of 16 ymm/xmm
    geometry = None
    for width in (w for w in (32, 16, 8) if w <= max(8, widest)):
        if r * max(1, width // lanes) <= budget:
            geometry = (width, r)
            break
    if geometry is None:
        per = max(1, 8 // lanes)
        geometry = (8, max(d for d in range(1, r + 1) if r % d == 0 and d * per <= budget))
    width, rows = geometry
    live = rows * max(1, width // lanes)
    chains = 1
    while chains < 4 and live * chains * 2 <= max(8, budget):
        chains *= 2
    return width, rows, chains


class SparseBlockLinear:
    """A prepared block-sparse linear layer: ``layer(x) == act(x @ W.T + bias)`` for a BSR ``W``
    of shape (out_features, in_features) whose blocksize :func:`kernel_block` accepts."""

    def __init__(self, weight: BSR, bias=None, activation: str | None = None, variant: str | None = None) -> None:
        if not isinstance(weight, BSR):
            raise KernelArgumentError(f"weight should be a kernels.BSR, got {type(weight).__name__}")
        if not kernel_block(weight.blocksize):
            raise KernelArgumentError(f"blocksize {weight.blocksize} has no kernel; both sides should be one of "
                                      f"{SIDES} (convert it to a CSR)")
        if not weight.fully_checked:
            weight.check_format(full=True)
        try:
            self.variant = isa.VARIANT if variant is None else isa.select(variant)
        except ValueError as exc:
            raise KernelArgumentError(str(exc)) from None
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.bias = prepare_bias(bias, self.out_features, self.dtype)
        self.activation = activation
        self._act = activation_code(activation)
        self._arrays = (weight.kernel_values(), kernel_array(weight.pattern.indices),
                        kernel_array(weight.pattern.indptr))
        self._chunks = RowChunks(weight.pattern.indptr)
        self._scratch = Scratch()
        # Per tile width (pick_tile: a batch of 8 in a 32-wide tile would compute 24 padding columns).
        self._geometry = {w: spmm_geometry(weight.blocksize[0], self.variant, w) for w in (8, 16, 32)}

    def __repr__(self) -> str:
        return f"SparseBlockLinear({self.weight!r}, activation={self.activation!r})"

    def describe_batch1(self) -> str:
        r, c = self.weight.blocksize
        return f"batch 1: BSR {r}x{c} ({self.variant})"

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Compute the layer on ``x`` (..., in_features); write into ``out`` when given."""
        out, batch = linear_output(x, out, self.dtype, self.in_features, self.out_features)
        if batch == 0 or self.out_features == 0:
            return out
        r, c = self.weight.blocksize
        variant, n_chunks = launch(self.weight.nnz * batch)
        bounds = self._chunks.bounds(n_chunks)
        if batch == 1:
            xv = np.ascontiguousarray(x.reshape(-1))
            variant(_bsr_jit.bsr_spmv_kernel(r, c))(*self._arrays, xv, self.bias, self._act, out.reshape(-1), bounds)
            return out
        width, rows, chains = self._geometry[pick_tile(batch)]
        xp = self._scratch.get((1, -(-batch // width), self.in_features, width), self.dtype)
        variant(_jit.pack_rows_kernel(pack_lanes(self.variant)))(
            np.ascontiguousarray(x.reshape(batch, self.in_features)), xp)
        kernel = variant(_bsr_jit.bsr_spmm_kernel(r, c, width, rows, chains))
        kernel(*self._arrays, xp, self.bias, self._act, out.reshape(-1), self.out_features, batch, bounds)
        return out


__all__ = ["BSR", "SparseBlockLinear", "kernel_block", "spmm_geometry", "SIDES"]
