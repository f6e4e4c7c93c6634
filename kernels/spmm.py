"""Sparse linear layers: ``Y = act(X @ W.T + b)`` with a CSR weight.

Use :class:`SparseLinear` on hot paths: it validates the weight, bias and activation
once at construction, so ``__call__`` only checks the input and dispatches. The
functional :func:`csr_linear` builds one per call.

Input policy: ``x`` must have the weight's dtype (float32 or float64); a different
dtype is rejected with :class:`KernelArgumentError` rather than converted, because a
silent float64 -> float32 cast loses precision and a float32 -> float64 cast allocates
on every call. Non-contiguous inputs are accepted (copied to contiguous memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from . import _jit, ell, isa
from .buffers import Scratch
from .csr import CSR, kernel_array
from .errors import KernelArgumentError

# Per-row cost in nonzero-equivalents, used to balance parallel chunks.
_ROW_COST = 2
# Parallel chunks of equal cost per call: Numba hands each of the active threads an
# equal run of consecutive chunks, so any count that is a multiple of the thread count
# balances; with four per thread Numba may start (NUMBA_NUM_THREADS), the busiest of
# any number of active threads gets at most one chunk (a quarter of a share) more than
# its share, and no call has to ask for the active number (numba.get_num_threads
# costs ~0.7 us).
DEFAULT_CHUNKS = 4 * numba.config.NUMBA_NUM_THREADS
# Below this many multiply-adds (nnz * batch) a call runs the serial kernel twins: a
# parallel launch costs ~2 us here, and a parallel region waits for its slowest
# thread, which on a busy machine can be descheduled for milliseconds. The runtime times
# batch-1 calls near it on the running host instead (SparseLinear.set_batch1_serial,
# sparsify.runtime.calibrate.SERIAL_TIMING_FACTOR).
SERIAL_WORK = 32768
# The sliced-ELL SpMV is cheaper per nonzero, so it stays serial longer: one thread beat
# two up to about 42k nonzeros here (1024 columns at 90%: 26k 4.5 against 6.8 us, 52k
# 9.1 against 7.7 us).
ELL_SERIAL_SCALE = 1.25
# How far ahead (in slots) a streamed sliced-ELL layout is prefetched (ell.stream_budget):
# 128, 256 and 512 measured alike on the 4x4096 MLP at 90% (1.3-1.6 ms against 1.8-2.4
# without; 8: 2.0-2.1, 32: 1.7-1.8).
ELL_PREFETCH_SLOTS = 128
# Batches up to this size run the sliced-ELL SpMV (4 rows per pass over the slots, the
# rest one by one) rather than the SpMM with its batch tile of 8. Same process, 1024^2 and
# 4096^2 at 90%, 2 threads, padded and compact forms, SpMM time / ELL time: batch 2 1.5-1.9,
# batch 3 1.0-1.7 (one row at a time), batch 4 1.0-1.9 (one 4-row pass), batch 5 0.9-1.2,
# batch 6 0.75-0.85.
ELL_ROWS_MAX_BATCH = 4


def activation_code(activation: str | None) -> int:
    """Map ``None``/``"none"``/``"relu"``/``"gelu"``/``"relu6"`` to the kernels' activation code."""
    try:
        return _jit.ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise KernelArgumentError(
            f"activation {activation!r} should be one of None, 'relu', 'gelu', 'relu6'") from None


def widest_tile(variant: str | None = None) -> int:
    """The widest SpMM batch tile for ``variant`` (default the host's): two vector registers
    of float32 per accumulator chain (``_simd.tile_row`` keeps four chains), so that the
    accumulators take at most half the register file: 32 with AVX-512 (measured fastest
    there, see _jit.TILES), 16 with AVX2, 8 with SSE2."""
    return 2 * isa.VECTOR_BYTES[isa.VARIANT if variant is None else variant] // 4


def pack_lanes(variant: str | None = None) -> int:
    """float32 values per vector register of ``variant`` (default the host's): the block the
    input packing transposes in registers (``_jit.pack_rows_kernel``)."""
    return isa.VECTOR_BYTES[isa.VARIANT if variant is None else variant] // 4


def pick_tile(batch: int, widest: int = 32) -> int:
    """Batch tile width for the SpMM kernel: 8 up to 8 columns, 16 up to 16, then 32, at
    most ``widest``."""
    return min(widest, 8 if batch <= 8 else 16 if batch <= 16 else 32)


def checked(weight: CSR) -> CSR:
    """Return ``weight`` after making sure its full format check has passed once."""
    if not isinstance(weight, CSR):
        raise KernelArgumentError(f"weight should be a kernels.CSR, got {type(weight).__name__}")
    if not weight.fully_checked:
        weight.check_format(full=True)
    return weight


def prepare_bias(bias, rows: int, dtype: np.dtype, name: str = "bias") -> np.ndarray:
    """A C-contiguous bias of ``rows`` values in ``dtype`` (zeros when ``bias`` is None)."""
    if bias is None:
        return np.zeros(rows, dtype=dtype)
    b = np.asarray(bias)
    if b.dtype != dtype:
        raise KernelArgumentError(f"{name} dtype {b.dtype} should be {dtype} (the weight's dtype)")
    if b.shape != (rows,):
        raise KernelArgumentError(f"{name} shape {b.shape} should be ({rows},)")
    return np.ascontiguousarray(b)


class RowChunks:
    """Row ranges of similar cost (nnz + a per-row term) for parallel work, cached per count."""

    def __init__(self, indptr: np.ndarray) -> None:
        rows = indptr.shape[0] - 1
        self._cost = indptr.astype(np.int64) + _ROW_COST * np.arange(rows + 1, dtype=np.int64)
        self._cache: dict[int, np.ndarray] = {}

    def bounds(self, n_chunks: int | None = None) -> np.ndarray:
        """int64 array of n_chunks+1 row boundaries (default: DEFAULT_CHUNKS)."""
        if n_chunks is None:
            n_chunks = DEFAULT_CHUNKS
        b = self._cache.get(n_chunks)
        if b is None:
            rows = self._cost.shape[0] - 1
            n = max(1, min(n_chunks, rows))
            targets = np.linspace(0, self._cost[-1], n + 1)
            b = np.searchsorted(self._cost, targets, side="left").clip(1, rows)
            # Move each boundary to whichever neighbouring row edge is nearer its target.
            nearer_prev = (targets - self._cost[b - 1]) < (self._cost[b] - targets)
            b = (b - nearer_prev).astype(np.int64)
            b[0], b[-1] = 0, rows
            b = np.unique(b) if rows else np.zeros(2, dtype=np.int64)
            self._cache[n_chunks] = b
        return b


class SparseLinear:
    """A prepared sparse linear layer: ``layer(x) == act(x @ W.T + bias)``.

    ``weight`` is a CSR of shape (out_features, in_features) (torch's ``Linear.weight``
    layout); ``bias`` has out_features values of the weight's dtype or is None;
    ``activation`` is None, ``"relu"`` or ``"gelu"`` (exact erf, torch's default).
    ``x`` has shape (..., in_features) and the weight's dtype; the result has shape
    (..., out_features). A single row of ``x`` goes through an SpMV kernel, several
    through the batch-tiled SpMM kernel (up to ELL_ROWS_MAX_BATCH rows through the
    sliced-ELL SpMV where it is in use); calls with fewer than SERIAL_WORK
    multiply-adds run on one thread.

    ``variant`` is the kernel variant (``isa.VARIANTS``; default ``isa.VARIANT``, the
    host's): "avx512" and "avx2" lay batch-1 weights out for their own permutes,
    "portable" runs the CSR kernels only. A variant wider than the host allows is refused.

    ``batch1`` picks the SpMV: ``"ell"`` the permute kernel over a sliced-ELL copy of
    the weight (``ell.py``; float32 with AVX2 or AVX-512 only; ~8-10 bytes per nonzero at 90%
    sparsity), ``"ell_compact"`` the same over its compact form (~6 bytes per nonzero,
    a little more work per slot), ``"csr"`` the gather kernel over the CSR itself,
    ``"auto"`` the sliced ELL when it is available and its padding small (fill >= its
    geometry's ``min_fill``): padded or compact as ``ell.worth_compacting`` decides from its
    bytes; the CSR kernel otherwise. None (default) means BATCH1_DEFAULT, ``"auto"``.
    A sliced-ELL layout larger than ``ell.stream_budget()`` (60% of the L3) is read with
    software prefetches. For a model's layers, :func:`fit_batch1_layouts` shares both
    budgets among them.

    Safe to call from several threads under the omp or tbb threading layer (Numba's
    workqueue layer is not thread-safe).
    """

    def __init__(self, weight: CSR, bias=None, activation: str | None = None,
                 batch1: str | None = None, variant: str | None = None) -> None:
        self.weight = checked(weight)
        try:
            self.variant = isa.VARIANT if variant is None else isa.select(variant)
        except ValueError as exc:
            raise KernelArgumentError(str(exc)) from None
        self.out_features, self.in_features = weight.shape
        self._nnz = weight.nnz  # read per call: the CSR's property costs ~0.15 us
        self.dtype = weight.dtype
        self.bias = prepare_bias(bias, self.out_features, self.dtype)
        self.activation = activation
        self._act = activation_code(activation)
        self._chunks = RowChunks(weight.indptr)
        self._csr_arrays = tuple(kernel_array(a) for a in (self.weight.data, self.weight.indices,
                                                           self.weight.indptr))
        self._scratch = Scratch()  # the packed input of batched calls
        self._batch1_serial: bool | None = None  # None: the SERIAL_WORK rule decides
        self.set_batch1_layout(_batch1_layout(self.weight, batch1, self.variant))

    def __repr__(self) -> str:
        return f"SparseLinear({self.weight!r}, activation={self.activation!r})"

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Compute the layer on ``x``; write into ``out`` (C-contiguous) when given."""
        ell_call = self._ell_call  # read once: another thread may drop it meanwhile
        # The common batch-1 call on the sliced ELL, with as little Python as its checks
        # allow (a small layer's call is ~20 us, and each step here costs ~0.1 us).
        if (out is None and ell_call is not None and ell_call.in_place and type(x) is np.ndarray
                and x.dtype is self.dtype and x.size == self.in_features and x.shape[-1] == self.in_features
                and x.flags.c_contiguous):
            serial = self._batch1_serial
            if serial is None:
                serial = self._nnz < SERIAL_WORK * ELL_SERIAL_SCALE
            if x.ndim == 1:
                out = np.empty(self.out_features, self.dtype)
                ell_call.one_row(x, out, serial)
                return out
            if x.ndim == 2:  # (1, in_features)
                out = np.empty((1, self.out_features), self.dtype)
                ell_call.one_row(x[0], out[0], serial)
                return out
            out = np.empty(x.shape[:-1] + (self.out_features,), self.dtype)
            ell_call.one_row(x.reshape(-1), out.reshape(-1), serial)
            return out
        out, batch = linear_output(x, out, self.dtype, self.in_features, self.out_features)
        if batch == 0 or self.out_features == 0:
            return out
        if ell_call is not None and (batch == 1 or batch <= ELL_ROWS_MAX_BATCH):
            serial = self._batch1_serial if batch == 1 else None
            if serial is None:
                serial = self._nnz * batch < SERIAL_WORK * ELL_SERIAL_SCALE
            if batch == 1:
                ell_call(x if x.ndim == 1 else x.reshape(-1), out if out.ndim == 1 else out.reshape(-1),
                         serial)
            else:  # beats the SpMM's padded tile
                ell_call.rows(x.reshape(batch, self.in_features), out.reshape(batch, self.out_features),
                              serial)
            return out
        if batch == 1 and self._batch1_serial is not None:
            variant, n_chunks = (_jit.serial, 1) if self._batch1_serial else (_identity, None)
        else:
            variant, n_chunks = launch(self.weight.nnz * batch)
        self._run(x, out, batch, n_chunks, variant)
        return out

    def head_major(self, x: np.ndarray, heads: int) -> np.ndarray:
        """``layer(x)`` for ``x`` (N, T, in_features) split into ``heads`` heads and laid out
        head-major, (N, heads, T, out_features // heads): attention's Reshape to (N, T, heads,
        D) and Transpose (0, 2, 1, 3), with no pass of their own where the batched kernel runs
        (T rows above ELL_ROWS_MAX_BATCH); the values are the layer's, bit for bit."""
        check_linear_input(x, self.dtype, self.in_features)
        if x.ndim != 3:
            raise KernelArgumentError(f"head_major input shape {x.shape} should be (N, T, {self.in_features})")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or self.out_features % heads:
            raise KernelArgumentError(f"heads {heads!r} should be an int >= 1 dividing out_features "
                                      f"{self.out_features}")
        n, t = x.shape[:2]
        d = self.out_features // heads
        if n * t == 0 or t <= ELL_ROWS_MAX_BATCH:  # the row kernels: their rows, rearranged
            y = self(x)
            return np.ascontiguousarray(y.reshape(n, t, heads, d).transpose(0, 2, 1, 3))
        y = np.empty((n, heads, t, d), self.dtype)
        self._spmm(np.ascontiguousarray(x), y.reshape(-1), heads, *launch(self.weight.nnz * n * t))
        return y

    def _spmm(self, x: np.ndarray, out: np.ndarray, heads: int, variant, n_chunks: int | None) -> None:
        """Flat ``out`` = the layer on C-contiguous ``x`` (N, T, in_features) through the batched
        kernel, each image's (T, out_features) output split into ``heads`` heads laid out
        head-major (1: as it is)."""
        n, t = x.shape[:2]
        d = self.out_features // heads
        tile = pick_tile(t, widest_tile(self.variant))
        xp = self._scratch.get((n, -(-t // tile), self.in_features, tile), self.dtype)
        pack = variant(_jit.pack_rows_kernel(pack_lanes(self.variant)))
        for i in range(n):
            pack(x[i], xp[i:i + 1])
        kernel = variant(_jit.spmm_kernel(tile))
        kernel(*self._csr_arrays, xp, self.bias, self._act, out, 0, heads * t * d, tile * d, 1, d, d, (t - 1) * d, t,
               _jit.tile_group(self.in_features, tile, xp.itemsize), _jit.BLOCK_NNZ, self._chunks.bounds(n_chunks))

    def _run(self, x: np.ndarray, out: np.ndarray, batch: int, n_chunks: int | None, variant) -> None:
        if batch == 1:
            xv = x.reshape(-1)
            if not xv.flags.c_contiguous:
                xv = np.ascontiguousarray(xv)
            variant(_jit.spmv)(*self._csr_arrays, xv, self.bias, self._act, out.reshape(-1),
                               self._chunks.bounds(n_chunks))
            return
        self._spmm(np.ascontiguousarray(x.reshape(1, batch, self.in_features)), out.reshape(-1), 1, variant,
                   n_chunks)

    def describe_batch1(self) -> str:
        """Which kernel batch-1 calls run, e.g. ``"batch 1: sliced ELL, compact, fill 0.50"``
        (``", one thread"`` or ``", all threads"`` added where :meth:`set_batch1_serial` chose)."""
        layout, call = self.ell, self._ell_call
        threads = {None: "", True: ", one thread", False: ", all threads"}[self._batch1_serial]
        if layout is None or call is None:
            return f"batch 1: CSR ({self.variant}){threads}"
        return (f"batch 1: sliced ELL {layout.geometry.label} ({layout.lanes} lanes), "
                f"{'compact' if layout.compact else 'padded'}, fill {layout.fill:.2f}"
                f"{', prefetched' if call.prefetch else ''}{threads}")

    @property
    def batch1_prefetched(self) -> bool:
        """Whether batch-1 calls stream the sliced-ELL layout with software prefetches (False
        on the CSR kernel)."""
        call = self._ell_call
        return call is not None and bool(call.prefetch)

    def set_batch1_serial(self, serial: bool | None) -> None:
        """Run batch-1 calls on one thread (True) or on all of them (False); None leaves
        it to the SERIAL_WORK rule (the default). Larger batches keep the rule."""
        if serial is not None and not isinstance(serial, bool):
            raise KernelArgumentError(f"serial should be True, False or None, got {serial!r}")
        self._batch1_serial = serial

    def set_batch1_layout(self, layout: ell.SlicedEll | None, prefetch: bool | None = None) -> None:
        """Run batch-1 calls on ``layout`` (a SlicedEll of this weight), or on the CSR
        kernel when None (the previous layout is freed). ``prefetch`` streams the layout
        with software prefetches; None decides by its own size (``ell.stream_budget``),
        :func:`fit_batch1_layouts` by the model's."""
        if layout is not None and (layout.shape != self.weight.shape or layout.nnz != self.weight.nnz):
            raise KernelArgumentError(f"layout {layout!r} does not hold this layer's weight {self.weight!r}")
        if layout is not None and layout.geometry.variant != self.variant:
            raise KernelArgumentError(f"layout {layout!r} is for the {layout.geometry.variant} kernels; this "
                                      f"layer runs the {self.variant} ones")
        if layout is None:
            self._ell_call = None
        else:
            if prefetch is None:
                prefetch = layout.nbytes > ell.stream_budget()
            self._ell_call = _EllCall(layout, self.bias, self._act, ELL_PREFETCH_SLOTS if prefetch else 0)
        self.ell = layout


class _EllCall:
    """Calls of the sliced-ELL SpMV on one layout, its arguments prepared once (a small
    layer's call is a few microseconds: Python work per call shows)."""

    def __init__(self, e: ell.SlicedEll, bias: np.ndarray, act: int, prefetch: int = 0) -> None:
        self.arrays = tuple(kernel_array(a) for a in _ell_arrays(e))
        self.bias, self.act = bias, act
        self.rows_out = e.shape[0]
        self.width = e.padded_columns
        chunks = RowChunks(e.group_cost())
        self.bounds = chunks.bounds(None)
        self.serial_bounds = chunks.bounds(1)
        compact, many = int(e.compact), _jit.MAX_PERMUTE_VECTORS
        self.prefetch = prefetch
        geo = e.geometry
        one, four = (_jit.ell_spmv_kernel(compact, n, prefetch, geo.lanes, int(geo.flat), geo.segment)
                     for n in (1, many))
        self.one = (one, _jit.serial(one))
        self.many = (four, _jit.serial(four))
        self.xpad = Scratch()  # inputs padded to the layout's width when they are narrower
        self.in_place = self.width == e.shape[1] > 0  # inputs read as they are, not padded

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """``x`` (1-D, or 2-D rows) as C-contiguous rows of the layout's width: itself when
        it already is, else a zero-padded copy in this thread's scratch buffer."""
        n = x.shape[-1]
        if n == self.width and x.flags.c_contiguous:
            return x
        xp = self.xpad.get(x.shape[:-1] + (self.width,), x.dtype)
        xp[..., :n] = x
        xp[..., n:] = 0
        return xp

    def __call__(self, x: np.ndarray, out: np.ndarray, serial: bool) -> None:
        """``out = layer(x)`` for 1-D ``x`` and C-contiguous 1-D ``out``; ``serial`` runs
        the single-threaded twin."""
        self.one_row(self._padded(x), out, serial)

    def one_row(self, x: np.ndarray, out: np.ndarray, serial: bool) -> None:
        """:meth:`__call__` for a C-contiguous ``x`` of the layout's width."""
        if serial:
            self.one[1](*self.arrays, x, 0, self.bias, self.act, out, 0, self.serial_bounds)
        else:
            self.one[0](*self.arrays, x, 0, self.bias, self.act, out, 0, self.bounds)

    def rows(self, x: np.ndarray, out: np.ndarray, serial: bool) -> None:
        """``out[i] = layer(x[i])`` for 2-D ``x`` and C-contiguous 2-D ``out``: whole
        groups of MAX_PERMUTE_VECTORS rows in one pass over the slots each, the rest one
        by one."""
        n, many = x.shape[0], _jit.MAX_PERMUTE_VECTORS
        kernel = self.many[1] if serial else self.many[0]
        bounds = self.serial_bounds if serial else self.bounds
        start = 0
        while n - start >= many:
            block = self._padded(x[start:start + many])
            kernel(*self.arrays, block.reshape(-1), self.width, self.bias, self.act,
                   out[start:start + many].reshape(-1), self.rows_out, bounds)
            start += many
        for i in range(start, n):
            self(x[i], out[i], serial)


def _ell_arrays(e: ell.SlicedEll) -> tuple[np.ndarray, ...]:
    """The sliced-ELL SpMV's weight arguments for ``e``: values, offsets, windows, slot
    pointers, value starts (the slot pointers again when padded: unused), group pointers,
    rows."""
    return (e.values, e.offsets, e.segments, e.slot_ptr, e.value_start if e.compact else e.slot_ptr,
            e.group_ptr, e.rows)


BATCH1_LAYOUTS = ("auto", "csr", "ell", "ell_compact")
# The batch-1 layout of layers built without an explicit ``batch1``.
BATCH1_DEFAULT = "auto"


def _batch1_layout(weight: CSR, batch1: str | None, variant: str) -> ell.SlicedEll | None:
    """The sliced-ELL copy of ``weight`` for batch-1 calls of the ``variant`` kernels, or
    None for the CSR kernel."""
    if batch1 is None:
        batch1 = BATCH1_DEFAULT
    if batch1 not in BATCH1_LAYOUTS:
        raise KernelArgumentError(f"batch1 {batch1!r} should be one of {BATCH1_LAYOUTS}")
    if batch1 == "csr":
        return None
    geo = ell.host_geometry(variant)
    usable = geo is not None and weight.dtype == np.float32
    if batch1 != "auto" and not usable:
        why = "float32 only" if geo is not None else f"needs AVX2 or AVX-512F; the kernels here are {variant!r}"
        raise KernelArgumentError(f"batch1={batch1!r} is not available here ({why})")
    if not usable or weight.shape[0] == 0:
        return None
    if batch1 == "ell_compact":
        return compact_layout(weight, geometry=geo)
    # Decided from the plans of every geometry the variant runs, so that only the form
    # taken is built.
    options = [ell.SlicedEll.plans(weight, geometry=g) for g in ell.variant_geometries(variant)]
    plans = min(options, key=lambda found: min(plan.cost for plan in found.values()))
    best = min(plans.values(), key=lambda plan: plan.cost)
    geo = best.geometry
    if batch1 == "ell":
        return ell.SlicedEll.from_plan(best)
    if best.fill < geo.min_fill:
        return None
    compact_plan = best if geo.compact_windows == "auto" else plans[geo.compact_windows]
    if ell.worth_compacting(best.nbytes, compact_plan.compact_nbytes, best.nbytes, flat=geo.flat):
        return ell.SlicedEll.from_plan(compact_plan).compacted()
    return ell.SlicedEll.from_plan(best)


def compact_layout(weight: CSR, built: ell.SlicedEll | None = None,
                   geometry: ell.Geometry | None = None) -> ell.SlicedEll:
    """The compact sliced-ELL form of ``weight``, over its geometry's
    ``compact_windows``. ``built``, a layout of ``weight`` at hand, is compacted instead of
    planning anew when its windows suit; else the layout is of ``geometry`` (default the
    host's)."""
    if built is not None:
        return compact_form(weight, built)[1]()
    return ell.SlicedEll.from_csr(weight, ell.resolve_geometry(geometry).compact_windows, geometry).compacted()


def compact_form(weight: CSR, built: ell.SlicedEll) -> tuple[int, Callable[[], ell.SlicedEll]]:
    """``(nbytes, build)`` of ``compact_layout(weight, built)``: its exact size, known
    before anything is built, and the call that builds it. An overlapping ``built`` whose
    geometry compacts over aligned windows is sized from that aligned plan, not from its
    own windows."""
    windows = built.geometry.compact_windows
    if windows == "auto" or built.aligned:
        return built.compact_nbytes, built.compacted
    plan = ell.SlicedEll.plans(weight, (windows,), built.geometry)[windows]
    return plan.compact_nbytes, lambda: ell.SlicedEll.from_plan(plan).compacted()


def fit_batch1_layouts(layers: list["SparseLinear"], budget: int | None = None) -> int:
    """Choose the batch-1 layout forms of ``layers`` (a model's layers, called one after
    another) from the bytes they take together.

    The working set is the bytes of whichever layout each layer runs, starting from the
    padded forms. While ``ell.worth_compacting`` says so for the working set (``budget``
    defaults to ``ell.cache_budget()``), layers switch to the compact form, those whose
    compact form saves the largest share of their bytes first. Every sliced-ELL layer is
    then prefetched in software when the whole working set exceeds
    ``ell.stream_budget()`` (it streams from DRAM), and not otherwise. Returns how many
    keep the padded form. These rules estimate the host's caches from the L3's size; the
    runtime times them against alternatives at load (``sparsify.runtime.calibrate``).
    """
    total = sum(layer.weight.nbytes if layer.ell is None else layer.ell.nbytes for layer in layers)
    padded = [layer for layer in layers if layer.ell is not None and not layer.ell.compact]
    kept = len(padded)
    if total > (ell.cache_budget() if budget is None else budget):  # else nothing switches
        forms = [(layer, *compact_form(layer.weight, layer.ell)) for layer in padded]
        for layer, nbytes, build in sorted(forms, key=lambda f: f[1] / f[0].ell.nbytes):
            if ell.worth_compacting(layer.ell.nbytes, nbytes, total, budget, layer.ell.geometry.flat):
                total -= layer.ell.nbytes - nbytes
                layer.set_batch1_layout(build())
                kept -= 1
    streamed = total > ell.stream_budget()
    for layer in layers:
        if layer.ell is not None and layer.batch1_prefetched != streamed:
            layer.set_batch1_layout(layer.ell, prefetch=streamed)
    return kept


class Batch1Forms(NamedTuple):
    """Both batch-1 layout forms of one layer: its padded layout, and its compact form's
    bytes and the call that builds it (see :func:`batch1_forms`)."""

    layer: "SparseLinear"
    padded: ell.SlicedEll
    compact_nbytes: int
    build_compact: Callable[[], ell.SlicedEll]


def batch1_forms(layers: list["SparseLinear"]) -> list[Batch1Forms]:
    """Both forms of the batch-1 layout of each of ``layers`` that runs one, in the order
    :func:`fit_batch1_layouts` compacts them: the largest share of bytes saved first. A
    layer running its compact form has its padded one planned anew."""
    forms = []
    for layer in layers:
        layout = layer.ell
        if layout is None:
            continue
        if layout.compact:
            padded = ell.SlicedEll.from_csr(layer.weight, geometry=layout.geometry)
            forms.append(Batch1Forms(layer, padded, layout.nbytes, lambda built=layout: built))
        else:
            forms.append(Batch1Forms(layer, layout, *compact_form(layer.weight, layout)))
    return sorted(forms, key=lambda f: f.compact_nbytes / max(1, f.padded.nbytes))


def set_batch1_forms(forms: list[Batch1Forms], compacted: int, prefetch: bool,
                     built: dict[int, ell.SlicedEll] | None = None) -> None:
    """Run the first ``compacted`` of ``forms`` (:func:`batch1_forms` order) on their compact
    form and the others padded, all prefetched in software or none. ``built`` keeps the
    compact forms built so far, by position, for the next call."""
    built = {} if built is None else built
    for i, form in enumerate(forms):
        if i < compacted:
            if i not in built:
                built[i] = form.build_compact()
            form.layer.set_batch1_layout(built[i], prefetch)
        else:
            form.layer.set_batch1_layout(form.padded, prefetch)


def _identity(kernel):
    return kernel


def check_linear_input(x, dtype: np.dtype, in_features: int) -> None:
    """KernelArgumentError naming what is wrong unless ``x`` is an array (..., in_features) of
    ``dtype``."""
    if not isinstance(x, np.ndarray):
        raise KernelArgumentError(f"input should be a numpy array, got {type(x).__name__}")
    if x.dtype is not dtype and x.dtype != dtype:
        raise KernelArgumentError(
            f"input dtype {x.dtype} should be {dtype} (the weight's dtype); "
            "convert it explicitly")
    if not x.shape or x.shape[-1] != in_features:
        raise KernelArgumentError(
            f"input shape {x.shape} should end in {in_features} (in_features)")


def linear_output(x, out, dtype: np.dtype, in_features: int, out_features: int) -> tuple[np.ndarray, int]:
    """(output array, batch rows) of a linear layer's call on ``x`` (..., in_features), after
    checking ``x`` and a given ``out`` (KernelArgumentError naming what is wrong)."""
    check_linear_input(x, dtype, in_features)
    shape = x.shape
    out_shape = shape[:-1] + (out_features,)
    if out is None:
        out = np.empty(out_shape, dtype=dtype)
    elif (not isinstance(out, np.ndarray) or out.shape != out_shape
          or (out.dtype is not dtype and out.dtype != dtype)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise KernelArgumentError(
            f"out should be a writeable C-contiguous {dtype} array of shape {out_shape}, "
            f"got {_describe(out)}")
    batch = x.size // in_features if in_features else int(np.prod(shape[:-1]))
    return out, batch


def launch(work: int):
    """(kernel variant, chunk count) for a call of ``work`` multiply-adds: the serial
    twins (``_jit.serial``) and one chunk below SERIAL_WORK, otherwise the parallel
    kernels as they are and the default chunking (None)."""
    return (_jit.serial, 1) if work < SERIAL_WORK else (_identity, None)


def csr_linear(x: np.ndarray, w: CSR, bias=None, activation: str | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """``act(x @ w.T + bias)`` for x of shape (..., in) -> (..., out); see SparseLinear."""
    return SparseLinear(w, bias, activation)(x, out)


def _describe(a) -> str:
    if not isinstance(a, np.ndarray):
        return type(a).__name__
    layout = "C-contiguous" if a.flags.c_contiguous else "non-contiguous"
    ro = "" if a.flags.writeable else "read-only "
    return f"{ro}{layout} {a.dtype} array of shape {a.shape}"


__all__ = ["SparseLinear", "csr_linear", "fit_batch1_layouts", "batch1_forms", "set_batch1_forms", "Batch1Forms", "compact_layout", "compact_form", "activation_code",
           "pick_tile", "widest_tile", "checked", "prepare_bias", "RowChunks", "SERIAL_WORK", "launch"]
