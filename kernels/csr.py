"""The CSR matrix type the kernels consume: arrays, invariants, dense conversion."""

from __future__ import annotations

import numpy as np

from .errors import CSRFormatError

# The one table of CSR dtypes, in memory and in ``ai.sparsify`` files alike (sparsify.sparse_ops
# reads it; the CSR pass stores what CSR.from_dense builds), narrowest first.
DATA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPES = (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))
INDPTR_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def dtype_names(dtypes) -> str:
    """``"int16, int32 or int64"``: a dtype table for error messages."""
    names = [str(d) for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def choose_index_dtypes(shape: tuple[int, int], nnz: int) -> tuple[np.dtype, np.dtype]:
    """(indices dtype, indptr dtype): the narrowest that hold every column index and nnz.

    Column indices are int16 while cols <= 32768, then int32, then int64; indptr is
    int32 while nnz fits, int64 otherwise. int16 indices were measured ~20% faster for
    batch-1 layers whose CSR lives in L3 (4096x4096 at 90%: 0.46 -> 0.37 ms on one
    thread) and no slower on small ones; they also save a quarter of the CSR's bytes.
    """
    cols, nnz = int(shape[1]), int(nnz)
    indices = next(d for d in INDEX_DTYPES if cols - 1 <= np.iinfo(d).max)
    indptr = next((d for d in INDPTR_DTYPES if nnz <= np.iinfo(d).max), INDPTR_DTYPES[-1])
    return indices, indptr


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def kernel_array(a: np.ndarray) -> np.ndarray:
    """``a`` for a kernel call: the writeable array under a read-only view of all of it
    (as :func:`_readonly` makes), else ``a`` itself. Numba's dispatcher types writeable
    arrays on a fast path: 14 arguments, 7 of them read-only, took 1.5 us per call
    against 1.0 us all writeable. The kernels never write these arrays."""
    base = a.base
    if (not a.flags.writeable and type(base) is np.ndarray and base.flags.writeable
            and base.dtype == a.dtype and base.shape == a.shape and base.strides == a.strides
            and base.ctypes.data == a.ctypes.data):
        return base
    return a


class CSR:
    """A compressed-sparse-row matrix: ``data``, ``indices``, ``indptr`` and ``shape``.

    Row ``r`` holds the values ``data[indptr[r]:indptr[r+1]]`` at the columns
    ``indices[indptr[r]:indptr[r+1]]``. ``data`` is float32 or float64; ``indices`` is
    int16, int32 or int64 and ``indptr`` int32 or int64, each wide enough for its values
    (see :func:`choose_index_dtypes`).

    The constructor runs the cheap checks of :meth:`check_format` (dtypes, dimensions,
    lengths). The O(nnz) checks run on ``check_format(full=True)``; the object remembers
    that they passed (``fully_checked``), and kernels run them once before first use,
    because Numba kernels do not bounds-check. The arrays are held as read-only views so
    the checked invariants cannot be broken through this object.
    """

    __slots__ = ("data", "indices", "indptr", "shape", "fully_checked")

    def __init__(self, data, indices, indptr, shape: tuple[int, int]) -> None:
        self.data = _readonly(np.ascontiguousarray(data))
        self.indices = _readonly(np.ascontiguousarray(indices))
        self.indptr = _readonly(np.ascontiguousarray(indptr))
        try:
            rows, cols = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise CSRFormatError(f"shape {shape!r} should be a pair of non-negative integers") from None
        self.shape = (rows, cols)
        self.fully_checked = False
        self.check_format(full=False)

    # -- properties -----------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of stored values (explicit zeros included)."""
        return int(self.data.shape[0])

    @property
    def density(self) -> float:
        """nnz / (rows * cols); 0.0 for an empty shape."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def dtype(self) -> np.dtype:
        """dtype of the stored values."""
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays."""
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    def __repr__(self) -> str:
        return (f"CSR(shape={self.shape}, nnz={self.nnz}, density={self.density:.4f}, "
                f"dtype={self.dtype}, index_dtype={self.indices.dtype})")

    # -- invariants -----------------------------------------------------------------
    def check_format(self, full: bool = False) -> None:
        """Raise CSRFormatError unless the invariants hold.

        Always: dtypes, 1-D arrays, ``indptr`` size rows+1, ``indptr[0] == 0``,
        ``indptr[-1] == len(indices) == len(data)``, indices dtype wide enough.
        With ``full=True`` also (O(nnz)): ``indptr`` non-decreasing, column indices in
        ``[0, cols)``, indices strictly increasing within each row (sorted, no
        duplicates). A passing full check sets ``fully_checked``.
        """
        rows, cols = self.shape
        if rows < 0 or cols < 0:
            raise CSRFormatError(f"shape {self.shape} should be a pair of non-negative integers")
        for name in ("data", "indices", "indptr"):
            a = getattr(self, name)
            if a.ndim != 1:
                raise CSRFormatError(f"{name} should be 1-D, got {a.ndim}-D with shape {a.shape}", array=name)
        if self.data.dtype not in DATA_DTYPES:
            raise CSRFormatError(f"data dtype {self.data.dtype} should be {dtype_names(DATA_DTYPES)}", array="data")
        if self.indices.dtype not in INDEX_DTYPES:
            raise CSRFormatError(
                f"indices dtype {self.indices.dtype} should be {dtype_names(INDEX_DTYPES)}", array="indices")
        if self.indptr.dtype not in INDPTR_DTYPES:
            raise CSRFormatError(f"indptr dtype {self.indptr.dtype} should be {dtype_names(INDPTR_DTYPES)}", array="indptr")
        if self.indptr.shape[0] != rows + 1:
            raise CSRFormatError(f"indptr size {self.indptr.shape[0]} should be {rows + 1} (rows + 1)", array="indptr")
        if self.indptr[0] != 0:
            raise CSRFormatError(f"indptr[0] is {int(self.indptr[0])} but should be 0", array="indptr")
        nnz = int(self.indptr[-1])
        if self.indices.shape[0] != nnz:
            raise CSRFormatError(
                f"indices size {self.indices.shape[0]} should be {nnz} (indptr[-1])", array="indices")
        if self.data.shape[0] != nnz:
            raise CSRFormatError(f"data size {self.data.shape[0]} should be {nnz} (indptr[-1])", array="data")
        limit = int(np.iinfo(self.indices.dtype).max)
        if cols - 1 > limit:
            raise CSRFormatError(
                f"indices dtype {self.indices.dtype} holds column indices up to {limit}, "
                f"but cols is {cols}", array="indices")
        if not full:
            return
        lengths = np.diff(self.indptr)
        bad = np.flatnonzero(lengths < 0)
        if bad.size:
            r = int(bad[0])
            raise CSRFormatError(
                f"indptr should be non-decreasing, but indptr[{r}] = {int(self.indptr[r])} "
                f"> indptr[{r + 1}] = {int(self.indptr[r + 1])}", array="indptr")
        if nnz:
            idx = self.indices
            out = np.flatnonzero((idx < 0) | (idx >= cols))
            if out.size:
                j = int(out[0])
                r = int(np.searchsorted(self.indptr, j, side="right")) - 1
                raise CSRFormatError(
                    f"column index {int(idx[j])} at indices[{j}] (row {r}) should be in [0, {cols})", array="indices")
            # Positions j >= 1 that are not the first entry of their row must exceed idx[j-1].
            not_first = np.ones(nnz, dtype=bool)
            starts = self.indptr[:-1][lengths > 0]
            not_first[starts] = False
            not_first[0] = False
            prev_ge = np.zeros(nnz, dtype=bool)
            prev_ge[1:] = idx[1:] <= idx[:-1]
            bad = np.flatnonzero(not_first & prev_ge)
            if bad.size:
                j = int(bad[0])
                r = int(np.searchsorted(self.indptr, j, side="right")) - 1
                what = "duplicate" if idx[j] == idx[j - 1] else "unsorted"
                raise CSRFormatError(
                    f"indices of row {r} should be strictly increasing, but indices[{j}] = "
                    f"{int(idx[j])} follows {int(idx[j - 1])} ({what})", array="indices")
        self.fully_checked = True

    # -- conversion -----------------------------------------------------------------
    @classmethod
    def from_dense(cls, w, mask=None, index_dtype=None) -> "CSR":
        """Build a CSR from a 2-D float32/float64 array, dropping zeros.

        ``mask`` (same shape, truthy = keep) drops every masked-out entry; a kept entry
        that is exactly 0.0 is dropped too. ``index_dtype`` (int16, int32 or int64) sets
        the indices dtype, with indptr int32 when it fits; by default both come from
        :func:`choose_index_dtypes`. The result is fully checked by construction.
        """
        w = np.asarray(w)
        if w.ndim != 2:
            raise CSRFormatError(f"weight should be 2-D, got {w.ndim}-D with shape {w.shape}")
        if w.dtype not in DATA_DTYPES:
            raise CSRFormatError(f"weight dtype {w.dtype} should be {dtype_names(DATA_DTYPES)}")
        keep = w != 0
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != w.shape:
                raise CSRFormatError(f"mask shape {mask.shape} should be {w.shape} (the weight's)")
            keep &= mask.astype(bool)
        rows_idx, cols_idx = np.nonzero(keep)  # row-major order: sorted within each row
        nnz = rows_idx.shape[0]
        idx_dtype, ptr_dtype = choose_index_dtypes(w.shape, nnz)
        if index_dtype is not None:
            idx_dtype = np.dtype(index_dtype)
            if idx_dtype not in INDEX_DTYPES:
                raise CSRFormatError(f"index_dtype {idx_dtype} should be {dtype_names(INDEX_DTYPES)}")
            if idx_dtype == np.int64:
                ptr_dtype = idx_dtype
        indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows_idx, minlength=w.shape[0]), out=indptr[1:])
        out = cls(w[rows_idx, cols_idx], cols_idx.astype(idx_dtype),
                  indptr.astype(ptr_dtype), w.shape)
        out.fully_checked = True
        return out

    def to_dense(self) -> np.ndarray:
        """The dense 2-D array (same dtype as ``data``)."""
        rows, cols = self.shape
        dense = np.zeros((rows, cols), dtype=self.data.dtype)
        row_of = np.repeat(np.arange(rows), np.diff(self.indptr))
        dense[row_of, self.indices] = self.data
        return dense

    def row_slice(self, start: int, stop: int) -> "CSR":
        """Rows ``start:stop`` as a new CSR sharing nothing mutable with this one."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise CSRFormatError(f"row slice {start}:{stop} should lie within [0, {self.shape[0]}]")
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        out = CSR(self.data[a:b], self.indices[a:b], self.indptr[start:stop + 1] - a,
                  (stop - start, self.shape[1]))
        out.fully_checked = self.fully_checked
        return out
