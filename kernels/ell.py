"""The batch-1 weight layout: sliced ELLPACK over column segments, gathered by permutes.

A CSR SpMV spends its time in gathers (``x[indices[j]]``). On AMD Zen 4 a 512-bit
hardware gather gives about 2.5 G nonzeros/s per core, slower than the L3 can deliver
the CSR. This layout trades padding for gathers: rows are taken GROUP_ROWS at a time
(one vector lane per row) and columns SEGMENT at a time, so the ``x`` values a
segment can need fit in two registers and one two-table permute (``vpermi2ps``)
fetches a value for every lane at once.

For each (row group, segment) pair holding a nonzero, the layout stores K *slots*,
K being the most nonzeros any of the group's rows has in that segment; slot k holds,
per lane, the lane's k-th nonzero of the segment as a value and a 5-bit column
offset, or EMPTY where that row has fewer. Pairs without nonzeros are not stored.
Rows are ordered by nonzero count first (stable), so rows of similar length share a
group and pad each other less; ``rows`` maps lane positions back to output rows.

The permute exists only with AVX-512 (:data:`AVAILABLE`). Padding costs bytes: about
10 per nonzero at 90% sparsity against the CSR's 6. The compact form
(:meth:`SlicedEll.compacted`) stores only the valid lanes' values (about 6 bytes per
nonzero) and expands them per slot. :class:`SparseLinear
<sparsify.kernels.spmm.SparseLinear>` uses this layout for batch-1 calls when it is
available and the padding is small enough (:data:`MIN_FILL`), padded while its bytes
fit the cores' L2 (:func:`cache_budget`), compact beyond; the CSR kernel otherwise. A
model's layers share the budget (``spmm.fit_batch1_layouts``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np

from .csr import CSR, _readonly
from .errors import KernelArgumentError

# Rows per group: one 512-bit float32 vector.
GROUP_ROWS = 16
# Columns per segment: the x values of a segment fill two 512-bit registers, the table
# of one vpermi2ps.
SEGMENT = 32
# Column offset of a padding lane (>= SEGMENT: the kernel zeroes such lanes).
EMPTY = 255
# Least fill (nonzeros / slot lanes) at which SparseLinear takes the layout. Measured on
# this machine's Zen 4 cores (2 threads, CSR time / this layout's time): 4096^2 at fill
# 0.50 x2.6, 0.33 x1.4, 0.28 x1.2, 0.21 x0.76; 1024^2 at 0.28 x1.7, 0.21 x1.2 (fixed
# costs dominate). Uniform 90% sparsity fills about 0.5, 98% 0.28, 99% 0.21.
MIN_FILL = 0.25


# Share of the cores' L2 the padded layouts of a model may fill. Measured here (Zen 4,
# 1 MiB L2 per core, 2 threads; padded against compact): 1024^2 at 90% (1.1 MB) 13.2
# against 14.1 us; 2048^2 (4.3 MB) 41 against 45 us; two 2048^2 (8.6 MB) 85 against 87
# us; but one 2896^2 (8.6 MB) 96 against 89 us, 4096^2 (17 MB) 177 against 148 us and
# the 4x4096 MLP (69 MB) 1.77 against 1.40 ms: once the slots come from L3 or DRAM,
# fewer bytes win.
CACHE_SHARE = 0.875
# L2 per core assumed when sysfs does not tell.
DEFAULT_L2_BYTES = 1 << 20


def cache_bytes(level: int, default: int) -> int:
    """Size of CPU 0's cache of ``level`` from sysfs (``default`` if unreadable)."""
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if int((entry / "level").read_text()) != level:
                continue
            text = (entry / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            return int(digits) * scale
    return default


def cache_budget() -> int:
    """Bytes of padded sliced-ELL layouts worth keeping for a model (CACHE_SHARE of the
    usable cores' L2): beyond them the compact form runs faster."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return int(cache_bytes(2, DEFAULT_L2_BYTES) * cores * CACHE_SHARE)


def _permute_available() -> bool:
    """True when Numba compiles for a host CPU with AVX-512F (the vpermi2ps instruction)."""
    cfg = numba.config
    if cfg.CPU_NAME not in (None, "", "host"):
        return False
    if cfg.CPU_FEATURES:
        return "+avx512f" in cfg.CPU_FEATURES.split(",")
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # an llvmlite that cannot read the host's features: stay on CSR
        return False


AVAILABLE = _permute_available()


class SlicedEll:
    """A float32 weight in the sliced-ELL layout (see the module docstring).

    Arrays: ``values`` (float32) and ``offsets`` (uint8) hold GROUP_ROWS lanes per slot;
    ``segments`` (int32) is each stored pair's segment, ``slot_ptr`` (int64) its first
    slot (one more entry than pairs), ``group_ptr`` (int64) each row group's first pair
    (one more entry than groups); ``rows`` (int32) is the output row of each lane
    position (``rows[g * GROUP_ROWS + lane]``). Built from a fully checked CSR, so every
    offset and segment is inside the matrix by construction.
    """

    __slots__ = ("values", "offsets", "segments", "slot_ptr", "group_ptr", "rows", "shape", "nnz",
                 "value_start")

    def __init__(self, values, offsets, segments, slot_ptr, group_ptr, rows, shape, nnz,
                 value_start=None) -> None:
        self.values, self.offsets, self.segments = values, offsets, segments
        self.slot_ptr, self.group_ptr, self.rows = slot_ptr, group_ptr, rows
        self.shape, self.nnz, self.value_start = shape, nnz, value_start

    @property
    def compact(self) -> bool:
        """True when ``values`` holds only the valid lanes (see :meth:`compacted`)."""
        return self.value_start is not None

    @property
    def slots(self) -> int:
        return int(self.slot_ptr[-1])

    @property
    def fill(self) -> float:
        """Nonzeros per stored lane (1.0 for no padding; 1.0 for an empty matrix)."""
        return self.nnz / (self.slots * GROUP_ROWS) if self.slots else 1.0

    @property
    def nbytes(self) -> int:
        arrays = (self.values, self.offsets, self.segments, self.slot_ptr, self.group_ptr, self.rows,
                  self.value_start)
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def compact_nbytes(self) -> int:
        """:attr:`nbytes` of :meth:`compacted` (without building it): the values shrink to
        the nonzeros plus GROUP_ROWS, and ``value_start`` adds one entry per pair and one."""
        if self.compact:
            return self.nbytes
        return self.nbytes - self.values.nbytes + (self.nnz + GROUP_ROWS) * 4 + self.slot_ptr.nbytes

    @property
    def padded_columns(self) -> int:
        """Length of the input the kernel reads: whole segments."""
        return -(-self.shape[1] // SEGMENT) * SEGMENT

    def __repr__(self) -> str:
        return (f"SlicedEll(shape={self.shape}, nnz={self.nnz}, slots={self.slots}, "
                f"fill={self.fill:.2f}{', compact' if self.compact else ''})")

    @classmethod
    def from_csr(cls, w: CSR) -> "SlicedEll":
        """The layout of a float32 CSR (fully checked here if it was not yet)."""
        if w.dtype != np.float32:
            raise KernelArgumentError(f"the sliced-ELL layout is float32 only, got {w.dtype}")
        if not w.fully_checked:
            w.check_format(full=True)
        n_rows, n_cols = w.shape
        n_segs = -(-n_cols // SEGMENT)
        n_groups = -(-n_rows // GROUP_ROWS)
        lengths = np.diff(w.indptr.astype(np.int64))
        rows = np.argsort(-lengths, kind="stable").astype(np.int32)  # lane position -> row
        position = np.empty(n_rows, np.int64)
        position[rows] = np.arange(n_rows)
        cols = w.indices.astype(np.int64)
        nnz = cols.shape[0]
        pos = np.repeat(position, lengths)
        seg = cols // SEGMENT
        # A row's nonzeros in one segment are adjacent (indices sorted within rows): runs.
        run_key = np.repeat(np.arange(n_rows, dtype=np.int64), lengths) * n_segs + seg
        starts = np.ones(nnz, bool)
        starts[1:] = run_key[1:] != run_key[:-1]
        run_first = np.flatnonzero(starts)
        run_of = np.cumsum(starts) - 1
        rank = np.arange(nnz) - run_first[run_of]  # slot within the pair
        run_len = np.diff(np.append(run_first, nnz))
        run_pair = (pos[run_first] // GROUP_ROWS) * n_segs + seg[run_first]
        pairs, pair_of_run = np.unique(run_pair, return_inverse=True)
        depth = np.zeros(pairs.shape[0], np.int64)
        np.maximum.at(depth, pair_of_run, run_len)
        slot_ptr = np.zeros(pairs.shape[0] + 1, np.int64)
        np.cumsum(depth, out=slot_ptr[1:])
        lane_at = (slot_ptr[pair_of_run[run_of]] + rank) * GROUP_ROWS + pos % GROUP_ROWS
        values = np.zeros(slot_ptr[-1] * GROUP_ROWS, np.float32)
        offsets = np.full(slot_ptr[-1] * GROUP_ROWS, EMPTY, np.uint8)
        values[lane_at] = w.data
        offsets[lane_at] = cols % SEGMENT
        group_ptr = np.searchsorted(pairs // n_segs, np.arange(n_groups + 1)).astype(np.int64)
        segments = (pairs % n_segs).astype(np.int32)
        return cls(*(_readonly(a) for a in (values, offsets, segments, slot_ptr, group_ptr, rows)),
                   (n_rows, n_cols), nnz)

    def compacted(self) -> "SlicedEll":
        """The same layout with only the valid lanes' values stored, in slot order.

        About 4 + 1/fill bytes per nonzero instead of 5/fill (6 against 10 at 90%
        sparsity, as few as the CSR); each slot then costs an unaligned load, an expand
        and a popcount more. ``value_start[p]`` is pair p's first value (one entry more
        than pairs); ``values`` ends with GROUP_ROWS zeros, so every slot's load of
        GROUP_ROWS values stays inside.
        """
        if self.compact:
            return self
        lanes = self.offsets.reshape(-1, GROUP_ROWS) < SEGMENT
        values = np.concatenate([self.values.reshape(-1, GROUP_ROWS)[lanes],
                                 np.zeros(GROUP_ROWS, np.float32)])
        before = np.zeros(lanes.shape[0] + 1, np.int64)
        np.cumsum(lanes.sum(axis=1), out=before[1:])
        return SlicedEll(_readonly(values), self.offsets, self.segments, self.slot_ptr,
                         self.group_ptr, self.rows, self.shape, self.nnz,
                         _readonly(before[self.slot_ptr]))

    def to_dense(self) -> np.ndarray:
        """The float32 matrix this layout holds (for tests and debugging)."""
        out = np.zeros((self.shape[0], self.padded_columns), np.float32)
        for g in range(self.group_ptr.shape[0] - 1):
            for p in range(self.group_ptr[g], self.group_ptr[g + 1]):
                q = self.value_start[p] if self.compact else 0
                for k in range(self.slot_ptr[p], self.slot_ptr[p + 1]):
                    for lane in range(GROUP_ROWS):
                        off = self.offsets[k * GROUP_ROWS + lane]
                        if off >= SEGMENT:
                            continue
                        if self.compact:
                            value, q = self.values[q], q + 1
                        else:
                            value = self.values[k * GROUP_ROWS + lane]
                        row = self.rows[g * GROUP_ROWS + lane]
                        out[row, self.segments[p] * SEGMENT + off] += value
        return out[:, :self.shape[1]]

    def group_cost(self) -> np.ndarray:
        """Cumulative slots at each group boundary (for cost-balanced parallel chunks)."""
        return self.slot_ptr[self.group_ptr]


__all__ = ["SlicedEll", "AVAILABLE", "MIN_FILL", "GROUP_ROWS", "SEGMENT", "EMPTY", "cache_budget",
           "cache_bytes"]
