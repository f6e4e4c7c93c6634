"""The batch-1 weight layout: sliced ELLPACK over column windows, read by permutes.

A CSR SpMV spends its time in gathers (``x[indices[j]]``). On AMD Zen 4 a 512-bit
hardware gather gives about 2.5 G nonzeros/s per core, slower than the L3 can deliver
the CSR. This layout trades padding for gathers: rows are taken GROUP_ROWS at a time
(one vector lane per row) and columns in *windows* of SEGMENT, so the ``x`` values a
window can need fit in two registers and one two-table permute (``vpermi2ps``)
fetches a value for every lane at once.

For each (row group, window) pair holding a nonzero, the layout stores K *slots*; slot
k holds, per lane, one of the lane's nonzeros in the window as a value and a 5-bit
column offset, or padding (a zero value) where the lane has fewer than k + 1 there. K is set by the
deepest lane, so the other lanes pad. Windows start at multiples of STEP (half a
SEGMENT) columns. Aligned windows start at multiples of SEGMENT only, so each nonzero
has one; overlapping ones start at every STEP, each nonzero may go to either window
over its column, and ``from_csr`` fills them greedily from the left, each lane moving
what a window has room for forward. That pads less (uniform 90% sparsity: 64% of the
lanes filled against 50%; 1024x1024: 10.2k slots against 12.9k) in about twice as
many pairs, and ``from_csr`` keeps whichever costs less (:data:`PAIR_COST`). Pairs
without nonzeros are not stored. Rows are ordered by nonzero count first (stable), so
rows of similar length share a group and pad each other less; ``rows`` maps lane
positions back to output rows.

Each kernel variant (``isa.py``) has its own :class:`Geometry` (:data:`GEOMETRIES`): the
numbers above are AVX-512's (16 lanes, 32-column windows, one ``vpermi2ps`` per slot).
AVX-512 also runs 64-column windows every 32 columns (four table registers, two permutes
and a blend per slot; uniform 90% sparsity fills 75% of their lanes), and each layer takes
the plan of least cost over both widths (:func:`variant_geometries`, WIDE_SLOT_COST).
AVX2 has no two-table permute: its layout takes 8 lanes and 16-column windows, whose
inputs fill two ymm registers, and a slot costs two ``vpermps`` and a blend. Its pairs
are short, so its kernel runs *flat* (:attr:`Geometry.flat`): each slot carries its
window and a row group's slots run as one loop, and its overlapping windows start every
4 columns (uniform 90% sparsity fills ~47% of its lanes with aligned windows, ~61%
overlapping). The portable variant has no layout
(:data:`AVAILABLE` is False there). Padding costs bytes: about 8 per nonzero at 90%
sparsity against the CSR's 6 (about 8.6 with the AVX2 geometry, whose slots carry their windows). The compact form
(:meth:`SlicedEll.compacted`) stores only the valid lanes' values (about 6 bytes per
nonzero) and expands them per slot. :class:`SparseLinear
<sparsify.kernels.spmm.SparseLinear>` uses this layout for batch-1 calls when it is
available and the padding is small enough (the geometry's ``min_fill``), padded or compact as
:func:`worth_compacting` decides from the bytes it would save; the CSR kernel
otherwise. A model's layers are decided together (``spmm.fit_batch1_layouts``), and the
runtime then times those forms against alternatives on the host that runs the model
(``sparsify.runtime.calibrate.choose_working_set``): the budgets below are its starting guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np

from . import isa
from ._simd import PERMUTE_GEOMETRY, PERMUTE_PADDING
from .csr import CSR, _readonly
from .errors import KernelArgumentError



class Geometry(NamedTuple):
    """The shape of a sliced-ELL layout for one kernel variant (``isa.VARIANTS``).

    ``lanes`` rows per group (one float32 vector); windows of ``segment`` columns, whose
    inputs fill the two table registers of the permute; ``step`` columns between the
    starts of neighbouring windows (a window (pair) covers the ``segment`` columns from
    ``segments[p] * step``; overlapping plans use every start, so each column lies in
    two windows, aligned plans every other one). ``pair_cost`` and ``min_fill``: see
    PAIR_COST and MIN_FILL. ``flat``: the kernel loads a window's inputs per slot from a
    per-slot window index and runs each row group's slots as one loop, instead of a loop
    per pair (see AVX2_PAIR_COST); the layout then stores a window per slot and one pair
    per row group (:class:`SlicedEll`). ``slot_cost``: what a slot costs against one of a
    two-register window (WIDE_SLOT_COST).
    """

    variant: str
    lanes: int
    segment: int
    step: int
    pair_cost: float
    min_fill: float
    flat: bool = False
    slot_cost: float = 1.0

    @property
    def label(self) -> str:
        """The variant and window width, e.g. ``"avx512/64"``: names a layout's kernel in
        notes and calibration keys."""
        return f"{self.variant}/{self.segment}"

    @property
    def compact_windows(self) -> str:
        """The windows of the compact form (``from_csr``'s ``windows``): "aligned" for the
        per-pair kernel over 32-column windows, whose loop over overlapping windows' twice
        as many (shallower) pairs costs the compact form more than their fewer slots save
        (4096^2 at 90%, 2 threads, same process, compact: aligned 218 us, overlapping 228
        us); the padded form's own ("auto") for a flat kernel, which pays nothing per pair,
        and for 64-column windows, whose overlapping plan has as many pairs as the aligned
        32-column one (benchmarks/README.md, "Wider windows")."""
        return "aligned" if not self.flat and self.segment == 2 * self.lanes else "auto"

    def code_offsets(self, columns: np.ndarray) -> np.ndarray:
        """The offset bytes the kernel reads (``_simd.PERMUTE_PADDING``) for lane columns
        in their windows, EMPTY on padding lanes."""
        columns = np.asarray(columns, np.uint8)
        if self.lanes != 8:
            return columns.copy()
        coded = (columns & 7) | ((columns & 8) << 4)
        return np.where(columns == EMPTY, PERMUTE_PADDING[8], coded).astype(np.uint8)

    def lane_columns(self, offsets: np.ndarray) -> np.ndarray:
        """Each lane's column in its window from the offset bytes, -1 on padding lanes."""
        offsets = np.asarray(offsets, np.uint8).astype(np.int16)
        if self.lanes != 8:
            return np.where(offsets < self.segment, offsets, np.int16(-1))
        columns = (offsets & 7) | ((offsets >> 4) & 8)
        return np.where(offsets == PERMUTE_PADDING[8], np.int16(-1), columns)


# How from_csr places nonzeros in windows.
WINDOW_CHOICES = ("auto", "overlapping", "aligned")
# A pair's fixed cost (its window's loads, loop entry and exit) in slots, fitted from
# one thread over 512x1024 at 90% (padded, the same process): 6.6k slots in 1.0k pairs
# 5.3 us, 5.2k slots in 2.0k pairs 5.8 us. By it overlapping windows pay off below ~90%
# sparsity and not above. Measured so (2 threads, the same process, p50, overlapping
# against aligned): 1024^2 at 50% 33-34 against 36-38 us; at 90% 19-22 both; 4096^2 at
# 98% 139 against 134-135 us, 1024x4096 at 98% 39 against 37.5 us.
PAIR_COST = 1.4
# Column offset of a padding lane while a layout is planned (>= SEGMENT); the stored
# offsets are coded for the kernel (Geometry.code_offsets).
EMPTY = 255
# Least fill (nonzeros / slot lanes) at which SparseLinear takes the layout. Measured on
# this machine's Zen 4 cores (2 threads, CSR time / this layout's time): 4096^2 at fill
# 0.50 x2.6, 0.33 x1.4, 0.28 x1.2, 0.21 x0.76; 1024^2 at 0.28 x1.7, 0.21 x1.2 (fixed
# costs dominate), with aligned windows, which fill uniform 90% sparsity about 0.5, 98%
# 0.28, 99% 0.21 (overlapping: 0.64, 0.34, 0.24).
MIN_FILL = 0.25
# The AVX2 layout runs flat: its pairs are too short for a loop each, and a slot that
# loads its own window costs nothing per pair, so the planner takes the plan of fewest
# slots (benchmarks/README.md, "AVX2 hosts").
AVX2_PAIR_COST = 0.0
AVX2_MIN_FILL = 0.25
# What a slot of a four-register (64-column) window costs against one of a two-register
# window, which it exceeds by a second vpermi2ps and a blend (fitted: benchmarks/README.md,
# "Wider windows").
WIDE_SLOT_COST = 1.13
# Window width and step per geometry come from the kernel that reads them. A variant may
# run several (VARIANT_GEOMETRIES); each layer takes the plan of least cost among them.
GEOMETRIES = {"avx512": Geometry("avx512", 16, 32, PERMUTE_GEOMETRY[16, 32], PAIR_COST, MIN_FILL),
              "avx512_w64": Geometry("avx512", 16, 64, PERMUTE_GEOMETRY[16, 64], PAIR_COST, MIN_FILL,
                                     slot_cost=WIDE_SLOT_COST),
              "avx2": Geometry("avx2", 8, 16, PERMUTE_GEOMETRY[8, 16], AVX2_PAIR_COST, AVX2_MIN_FILL, flat=True)}
# The geometries each variant's kernels read, its default (host_geometry) first.
VARIANT_GEOMETRIES = {"avx512": ("avx512", "avx512_w64"), "avx2": ("avx2",)}
# The AVX-512 geometry's numbers, kept as names: rows per group (one 512-bit float32
# vector), window width (two 512-bit registers, the table of one vpermi2ps), window step.
GROUP_ROWS, SEGMENT, STEP = (GEOMETRIES["avx512"].lanes, GEOMETRIES["avx512"].segment,
                             GEOMETRIES["avx512"].step)


# Share of the L3 the padded layouts of a model may fill whatever their padding: up to
# it the slots come from L2 or L3, read about as fast here, and the compact form's
# expand per slot costs more than its fewer bytes save. Measured on this machine (Zen 4,
# 1 MiB L2 per core, 32 MiB L3; one layer, same process, p50 compact / padded): with 2
# threads 1.01-1.36 for every layer up to 7.7 MB padded (1024^2, 2048^2, 1024x4096 and
# 4096x1024 at 50-98% sparsity; 1024^2 at 50%: 41.6 against 30.5 us), with 1 thread
# 1.10-1.48 at 22 of those 24 points. Beyond it, see MIN_COMPACT_SAVING.
CACHE_SHARE = 0.25
# Least share of a layout's bytes its compact form must save to be worth taking between
# cache_budget and stream_budget. Measured as above, 2 threads: 11-14 MB padded, compact
# saving 3% (2048^2, 1024x4096, 4096x1024 at 50%) 1.34-1.55; saving 23% (4096^2 at 90%)
# 0.79; saving 44% (4096^2 at 95%) 0.95. Beyond stream_budget the compact form wins
# whatever it saves (4096^2 at 50-80%, 22-46 MB: 0.84-0.88).
MIN_COMPACT_SAVING = 0.2
# Share of the L3 beyond which a model's batch-1 layouts are streamed with software
# prefetches (stream_budget). Measured here (Zen 4, 32 MiB L3, 2 threads, same process,
# compact 4096^2 layers at 90%, 10.75 MB each; p50 without / with prefetches 128 slots
# ahead): one layer 0.19-0.21 / 0.21-0.23 ms, two 0.45-0.69 / 0.48-0.55 ms, three
# 0.99-1.59 / 0.69-0.89 ms, four 1.84-2.44 / 1.33-1.61 ms. Below 60%, a layer still in
# the L3 runs slower with prefetches (the flat AVX2 kernel's figures: benchmarks/README.md,
# "AVX2 hosts").
STREAM_SHARE = 0.6
# Share of the L3 beyond which a model's flat layouts (the AVX2 kernel) switch to their
# compact form: the flat kernel's expand per slot costs more than the bytes it saves
# until the layouts come from DRAM (benchmarks/README.md, "AVX2 hosts").
FLAT_COMPACT_SHARE = 1.0
# L3 assumed when sysfs does not tell.
DEFAULT_L3_BYTES = 32 << 20


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
    """Bytes of padded sliced-ELL layouts a model keeps whatever their padding
    (CACHE_SHARE of the L3, read from sysfs)."""
    return int(cache_bytes(3, DEFAULT_L3_BYTES) * CACHE_SHARE)


def stream_budget() -> int:
    """Bytes of batch-1 layouts beyond which a model's layers are streamed from DRAM, and
    prefetched in software (STREAM_SHARE of the L3)."""
    return int(cache_bytes(3, DEFAULT_L3_BYTES) * STREAM_SHARE)


def worth_compacting(padded_nbytes: int, compact_nbytes: int, total: int, budget: int | None = None,
                     flat: bool = False) -> bool:
    """Whether a padded layout of ``padded_nbytes`` should switch to its compact form of
    ``compact_nbytes`` while its model's batch-1 layouts take ``total`` bytes: never
    within ``budget`` (default :func:`cache_budget`), always beyond :func:`stream_budget`,
    and in between when it saves at least MIN_COMPACT_SAVING of the layout's bytes. A
    ``flat`` layout (:attr:`Geometry.flat`) switches beyond :func:`flat_compact_budget`
    only."""
    if total <= (cache_budget() if budget is None else budget):
        return False
    if flat:
        return total > flat_compact_budget()
    if total > stream_budget():
        return True
    return compact_nbytes <= (1.0 - MIN_COMPACT_SAVING) * padded_nbytes


def flat_compact_budget() -> int:
    """Bytes of batch-1 layouts beyond which flat ones switch to their compact form
    (FLAT_COMPACT_SHARE of the L3)."""
    return int(cache_bytes(3, DEFAULT_L3_BYTES) * FLAT_COMPACT_SHARE)


def host_geometry(variant: str | None = None) -> Geometry | None:
    """The layout geometry of ``variant`` (default: the variant this process runs,
    ``isa.VARIANT``), None for the portable variant (no permute kernel there)."""
    return GEOMETRIES.get(isa.VARIANT if variant is None else variant)


def variant_geometries(variant: str | None = None) -> tuple[Geometry, ...]:
    """Every layout geometry the ``variant`` kernels run (default: this process's
    variant), its default first; empty for the portable variant."""
    names = VARIANT_GEOMETRIES.get(isa.VARIANT if variant is None else variant, ())
    return tuple(GEOMETRIES[name] for name in names)


def resolve_geometry(geometry: Geometry | str | None) -> Geometry:
    """A Geometry from a Geometry, a variant name, or None (the host's; AVX-512's layout
    where the host has no permute kernel, for building and inspecting layouts)."""
    if isinstance(geometry, Geometry):
        return geometry
    if geometry is None:
        return host_geometry() or GEOMETRIES["avx512"]
    if geometry not in GEOMETRIES:
        raise KernelArgumentError(f"sliced-ELL geometry {geometry!r} should be one of {sorted(GEOMETRIES)}")
    return GEOMETRIES[geometry]


# True when this process runs a permute kernel (AVX-512 or AVX2 variant).
AVAILABLE = host_geometry() is not None


@numba.njit(cache=True, nogil=True)
def _assign_windows(indptr, indices, data, rows, every, depth, slot_ptr, values, offsets, write, group_rows,
                    step, segment):
    """Place each group's nonzeros in windows, greedily from the left (see from_csr).

    Groups have ``group_rows`` lanes; windows of ``segment`` columns start at every
    ``every``-th multiple of ``step`` (1: overlapping, 2: aligned). Window a of a group
    takes, in every lane, the nonzeros left below column ``(a + every) * step``
    (mandatory: no later window covers them; for the last window, all that are left)
    and, while its depth allows, the lane's next ones below ``a*step + segment``; its
    depth is the deepest lane's mandatory count. ``write`` False records the depths in
    ``depth[g, a]``; True replays them, storing lane values and offsets from each pair's
    first slot (``slot_ptr``, pairs numbered row-major over ``depth``'s nonzero entries).
    """
    n_rows = rows.shape[0]
    n_groups, n_windows = depth.shape
    nxt = np.zeros(group_rows, np.int64)
    end = np.zeros(group_rows, np.int64)
    pair = 0
    for g in range(n_groups):
        lanes = min(group_rows, n_rows - g * group_rows)
        for lane in range(lanes):
            r = rows[g * group_rows + lane]
            nxt[lane], end[lane] = indptr[r], indptr[r + 1]
        for a in range(0, n_windows, every):
            start = a * step
            # The last window takes all that is left (it reaches the last column).
            mandatory = start + every * step if a + every < n_windows else start + segment
            k = depth[g, a]
            if not write:
                for lane in range(lanes):
                    j = nxt[lane]
                    while j < end[lane] and indices[j] < mandatory:
                        j += 1
                    k = max(k, j - nxt[lane])
                depth[g, a] = k
            if k == 0:
                continue
            for lane in range(lanes):
                j, taken = nxt[lane], 0
                while j < end[lane] and taken < k and indices[j] < start + segment:
                    if write:
                        at = (slot_ptr[pair] + taken) * group_rows + lane
                        values[at] = data[j]
                        offsets[at] = indices[j] - start
                    j += 1
                    taken += 1
                nxt[lane] = j
            pair += 1


def _plan_windows(w: CSR, rows: np.ndarray, every: int, geo: Geometry) -> np.ndarray:
    """The depth of each (group, window) pair for windows every ``every`` steps."""
    # Window starts, in steps: the last window ends at or after the last column, and no
    # window ends beyond the columns rounded up to a whole step (segment when aligned).
    blocks = -(-w.shape[1] // geo.step)
    n_windows = max(1, blocks - (geo.segment // geo.step - 1)) if every == 1 else blocks
    depth = np.zeros((-(-w.shape[0] // geo.lanes), n_windows), np.int64)
    _assign_windows(w.indptr, w.indices, w.data, rows, every, depth, np.zeros(1, np.int64),
                    np.zeros(0, np.float32), np.zeros(0, np.uint8), False, geo.lanes, geo.step, geo.segment)
    return depth


def slot_segment_dtype(cols: int, step: int) -> type:
    """The dtype of a flat layout's per-slot windows over ``cols`` columns: uint16 while
    every window index fits, int32 beyond."""
    return np.uint16 if -(-cols // step) <= np.iinfo(np.uint16).max + 1 else np.int32


def _compact_nbytes(padded_nbytes: int, slots: int, pairs: int, nnz: int, lanes: int) -> int:
    """Bytes of the compact form of a padded layout of ``padded_nbytes``: its values shrink
    to the nonzeros plus one slot's ``lanes``, and ``value_start`` adds one entry per pair and one."""
    return padded_nbytes - slots * lanes * 4 + (nnz + lanes) * 4 + (pairs + 1) * 8


def window_cost(depth: np.ndarray, pair_cost: float = PAIR_COST, slot_cost: float = 1.0) -> float:
    """Estimated SpMV cost of a window plan, in two-register slots: ``slot_cost`` per slot
    plus ``pair_cost`` per pair."""
    return slot_cost * float(depth.sum()) + pair_cost * float(np.count_nonzero(depth))


class WindowPlan:
    """Where a CSR's nonzeros go in a sliced-ELL layout, before anything is built: the
    geometry, the row order, the window step (``every`` steps) and each (group, window)
    pair's depth. Its byte counts let a caller choose a form without building the layout."""

    __slots__ = ("w", "rows", "every", "depth", "geometry")

    def __init__(self, w: CSR, rows: np.ndarray, every: int, geometry: Geometry | str | None = None) -> None:
        self.w, self.rows, self.every = w, rows, every
        self.geometry = resolve_geometry(geometry)
        self.depth = _plan_windows(w, rows, every, self.geometry)

    @property
    def cost(self) -> float:
        return window_cost(self.depth, self.geometry.pair_cost, self.geometry.slot_cost)

    @property
    def slots(self) -> int:
        return int(self.depth.sum())

    @property
    def pairs(self) -> int:
        return int(np.count_nonzero(self.depth))

    @property
    def fill(self) -> float:
        """Nonzeros per stored lane of the layout (1.0 for an empty matrix)."""
        return self.w.nnz / (self.slots * self.geometry.lanes) if self.slots else 1.0

    @property
    def stored_pairs(self) -> int:
        """Pairs the layout stores: one per (group, window) pair holding a nonzero, or one
        per row group for a flat geometry."""
        return self.depth.shape[0] if self.geometry.flat else self.pairs

    @property
    def nbytes(self) -> int:
        """:attr:`SlicedEll.nbytes` of the padded layout this plan builds: values and
        offsets per slot lane, a window per pair (per slot when flat) and a slot pointer
        per stored pair, a group pointer per group and a row per row."""
        groups, geo, pairs = self.depth.shape[0], self.geometry, self.stored_pairs
        if geo.flat:
            windows = self.slots * np.dtype(slot_segment_dtype(self.w.shape[1], geo.step)).itemsize
        else:
            windows = pairs * 4
        return (self.slots * geo.lanes * 5 + windows + (pairs + 1) * 8 + (groups + 1) * 8
                + self.w.shape[0] * 4)

    @property
    def compact_nbytes(self) -> int:
        """:attr:`SlicedEll.nbytes` of the compact form of that layout."""
        return _compact_nbytes(self.nbytes, self.slots, self.stored_pairs, self.w.nnz, self.geometry.lanes)


class SlicedEll:
    """A float32 weight in the sliced-ELL layout of one :class:`Geometry` (see the module
    docstring).

    Arrays: ``values`` (float32) and ``offsets`` (uint8) hold ``geometry.lanes`` lanes per
    slot; ``segments`` (int32) is each stored pair's window (its first column over
    ``geometry.step``), ``slot_ptr`` (int64) its first slot (one more entry than pairs),
    ``group_ptr`` (int64) each row group's first pair (one more entry than groups);
    ``rows`` (int32) is the output row of each lane position (``rows[g * lanes + lane]``).
    A flat geometry's layout stores a window per slot instead, ``segments[k]`` (uint16
    where every window index fits, else int32), and its pairs are its row groups: one
    slot range each (``group_ptr`` counts 0, 1, 2, ...). Built from a fully checked CSR,
    so every offset and segment is inside the matrix by construction.
    """

    __slots__ = ("values", "offsets", "segments", "slot_ptr", "group_ptr", "rows", "shape", "nnz",
                 "value_start", "geometry")

    def __init__(self, values, offsets, segments, slot_ptr, group_ptr, rows, shape, nnz,
                 value_start=None, geometry: Geometry | str | None = None) -> None:
        self.values, self.offsets, self.segments = values, offsets, segments
        self.slot_ptr, self.group_ptr, self.rows = slot_ptr, group_ptr, rows
        self.shape, self.nnz, self.value_start = shape, nnz, value_start
        self.geometry = resolve_geometry(geometry)

    @property
    def lanes(self) -> int:
        return self.geometry.lanes

    @property
    def compact(self) -> bool:
        """True when ``values`` holds only the valid lanes (see :meth:`compacted`)."""
        return self.value_start is not None

    @property
    def aligned(self) -> bool:
        """True when every window starts at a multiple of the segment: the plan that
        ``from_csr(w, "aligned")`` builds (each nonzero has one such window)."""
        return not np.any(self.segments % (self.geometry.segment // self.geometry.step))

    @property
    def slots(self) -> int:
        return int(self.slot_ptr[-1])

    @property
    def fill(self) -> float:
        """Nonzeros per stored lane (1.0 for no padding; 1.0 for an empty matrix)."""
        return self.nnz / (self.slots * self.lanes) if self.slots else 1.0

    @property
    def nbytes(self) -> int:
        arrays = (self.values, self.offsets, self.segments, self.slot_ptr, self.group_ptr, self.rows,
                  self.value_start)
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def compact_nbytes(self) -> int:
        """:attr:`nbytes` of :meth:`compacted` (without building it)."""
        if self.compact:
            return self.nbytes
        return _compact_nbytes(self.nbytes, self.slots, self.slot_ptr.shape[0] - 1, self.nnz, self.lanes)

    @property
    def padded_columns(self) -> int:
        """Length of the input the kernel reads: the columns, rounded up to a whole step,
        or to the end of the last window where that is further."""
        step, segment = self.geometry.step, self.geometry.segment
        last = int(self.segments.max()) * step + segment if self.segments.shape[0] else 0
        return max(-(-self.shape[1] // step) * step, last)

    def __repr__(self) -> str:
        return (f"SlicedEll(shape={self.shape}, nnz={self.nnz}, slots={self.slots}, "
                f"fill={self.fill:.2f}, {self.geometry.label}{', compact' if self.compact else ''})")

    @classmethod
    def from_csr(cls, w: CSR, windows: str = "auto", geometry: Geometry | str | None = None) -> "SlicedEll":
        """The layout of a float32 CSR (fully checked here if it was not yet) in
        ``geometry`` (a Geometry or variant name; default the host's).

        ``windows="overlapping"`` lets each nonzero go to either of the two windows over
        its column, filled greedily (fewer slots, more and shallower pairs);
        ``"aligned"`` uses only the windows starting at multiples of the segment (each
        nonzero has one); ``"auto"`` (default) plans both and builds the one of lower
        :func:`window_cost`.
        """
        plans = cls.plans(w, ("overlapping", "aligned") if windows == "auto" else (windows,), geometry)
        return cls.from_plan(min(plans.values(), key=lambda plan: plan.cost))

    @staticmethod
    def plans(w: CSR, windows=("overlapping", "aligned"),
              geometry: Geometry | str | None = None) -> dict[str, WindowPlan]:
        """The :class:`WindowPlan` of each of ``windows`` ("overlapping", "aligned") for a
        float32 CSR (fully checked here if it was not yet) in ``geometry`` (default the host's)."""
        if w.dtype != np.float32:
            raise KernelArgumentError(f"the sliced-ELL layout is float32 only, got {w.dtype}")
        geo = resolve_geometry(geometry)
        every = {"overlapping": 1, "aligned": geo.segment // geo.step}
        for choice in windows:
            if choice not in every:
                raise KernelArgumentError(f"windows {choice!r} should be one of {WINDOW_CHOICES}")
        if not w.fully_checked:
            w.check_format(full=True)
        lengths = np.diff(w.indptr.astype(np.int64))
        rows = np.argsort(-lengths, kind="stable").astype(np.int32)  # lane position -> row
        return {choice: WindowPlan(w, rows, every[choice], geo) for choice in windows}

    @classmethod
    def from_plan(cls, plan: WindowPlan) -> "SlicedEll":
        """The padded layout ``plan`` describes."""
        w, rows, every, depth, geo = plan.w, plan.rows, plan.every, plan.depth, plan.geometry
        n_rows, n_cols = w.shape
        group_of, segments = np.nonzero(depth)  # row-major: pairs by group, then window
        slot_ptr = np.zeros(segments.shape[0] + 1, np.int64)
        np.cumsum(depth[group_of, segments], out=slot_ptr[1:])
        values = np.zeros(slot_ptr[-1] * geo.lanes, np.float32)
        offsets = np.full(slot_ptr[-1] * geo.lanes, EMPTY, np.uint8)
        _assign_windows(w.indptr, w.indices, w.data, rows, every, depth, slot_ptr, values, offsets, True,
                        geo.lanes, geo.step, geo.segment)
        offsets = geo.code_offsets(offsets)
        group_ptr = np.searchsorted(group_of, np.arange(depth.shape[0] + 1)).astype(np.int64)
        segments = segments.astype(np.int32)
        if geo.flat:  # a window per slot; one pair per row group
            segments = np.repeat(segments, np.diff(slot_ptr)).astype(slot_segment_dtype(n_cols, geo.step))
            slot_ptr = slot_ptr[group_ptr]
            group_ptr = np.arange(depth.shape[0] + 1, dtype=np.int64)
        return cls(*(_readonly(a) for a in (values, offsets, segments, slot_ptr, group_ptr, rows)),
                   (n_rows, n_cols), int(w.nnz), geometry=geo)

    def compacted(self) -> "SlicedEll":
        """The same layout with only the valid lanes' values stored, in slot order.

        About 4 + 1/fill bytes per nonzero instead of 5/fill (6 against 8-10 at 90%
        sparsity, as few as the CSR); each slot then costs an unaligned load, an expand
        and a popcount more. ``value_start[p]`` is pair p's first value (one entry more
        than pairs); ``values`` ends with one slot's lanes of zeros, so every slot's load
        of that many values stays inside.
        """
        if self.compact:
            return self
        lanes = self.geometry.lane_columns(self.offsets).reshape(-1, self.lanes) >= 0
        values = np.concatenate([self.values.reshape(-1, self.lanes)[lanes],
                                 np.zeros(self.lanes, np.float32)])
        before = np.zeros(lanes.shape[0] + 1, np.int64)
        np.cumsum(lanes.sum(axis=1), out=before[1:])
        return SlicedEll(_readonly(values), self.offsets, self.segments, self.slot_ptr,
                         self.group_ptr, self.rows, self.shape, self.nnz,
                         _readonly(before[self.slot_ptr]), self.geometry)

    def to_dense(self) -> np.ndarray:
        """The float32 matrix this layout holds (for tests and debugging)."""
        out = np.zeros((self.shape[0], self.padded_columns), np.float32)
        n, step, flat = self.lanes, self.geometry.step, self.geometry.flat
        columns = self.geometry.lane_columns(self.offsets)
        for g in range(self.group_ptr.shape[0] - 1):
            for p in range(self.group_ptr[g], self.group_ptr[g + 1]):
                q = self.value_start[p] if self.compact else 0
                for k in range(self.slot_ptr[p], self.slot_ptr[p + 1]):
                    start = self.segments[k if flat else p] * step
                    for lane in range(n):
                        off = int(columns[k * n + lane])
                        if off < 0:
                            continue
                        if self.compact:
                            value, q = self.values[q], q + 1
                        else:
                            value = self.values[k * n + lane]
                        row = self.rows[g * n + lane]
                        out[row, start + off] += value
        return out[:, :self.shape[1]]

    def group_cost(self) -> np.ndarray:
        """Cumulative slots at each group boundary (for cost-balanced parallel chunks)."""
        return self.slot_ptr[self.group_ptr]


__all__ = ["SlicedEll", "WindowPlan", "Geometry", "GEOMETRIES", "AVAILABLE", "MIN_FILL", "MIN_COMPACT_SAVING",
           "GROUP_ROWS", "SEGMENT", "STEP", "EMPTY", "cache_budget", "cache_bytes", "host_geometry",
           "resolve_geometry", "slot_segment_dtype", "stream_budget", "flat_compact_budget", "variant_geometries",
           "worth_compacting"]
