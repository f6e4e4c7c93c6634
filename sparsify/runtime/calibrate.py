"""Decisions measured on the running host: convert or keep dense, and the batch-1 kernel; cached per host.

The CSR pass asks, for each candidate layer, whether our kernel beats ONNX Runtime's dense
op on this machine at the layer's batch. :class:`Calibrator` times both on the layer's own
weight (a few tens of milliseconds, dense and sparse alternating in blocks), adds the cost
of the extra ONNX Runtime call a converted layer can split off (measured once: an
``Identity`` session run), and caches the result per host: one JSON file per CPU model,
vector features, kernel variant, thread count and library versions, under
``$SPARSIFY_CACHE_DIR`` (default ``$XDG_CACHE_HOME/sparsify`` or ``~/.cache/sparsify``),
keyed by the layer's kind, shape, density (to 0.01) and batch. ``SPARSIFY_CALIBRATION=off``
turns it off (the pass then uses its fixed rules), which the test suite does by default.
Processes time one at a time (:meth:`Calibrator.exclusive`, a lock file beside the cache):
timings taken while another process times on the same cores would be cached as this host's.

:func:`choose_batch1_forms` does the same at load for each Linear's batch-1 kernel: the
sliced-ELL layout the size rules chose against the CSR kernel. Which wins depends on the
host: compiled for AVX2 and run on the Zen 4 VM, the CSR gather kernel beat the compact
AVX2 layout at 4096x4096 90% (0.65 against 1.38 ms) while the AVX-512 layout beat the CSR
(0.39 against 0.79 ms) (benchmarks/results/kernels*.json). It then times the layers'
layouts together (:func:`choose_working_set`): which of them run compact, and whether they
are prefetched, depends on the host's caches and memory, which the size rules of
``spmm.fit_batch1_layouts`` only estimate from the L3's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ENV = "SPARSIFY_CALIBRATION"
CACHE_ENV = "SPARSIFY_CACHE_DIR"
# Timing budget per side and layer (seconds of calls), in blocks of about BLOCK_S.
BUDGET_S = 0.03
BLOCK_S = 0.002
ROUNDS = 5
# Least speed-up over the size rules' batch-1 forms a timed alternative needs to replace
# them (choose_working_set): choices made on smaller gains came out from -4% to +8% against
# the rules when re-timed on their own (benchmarks/README.md, "Batch-1 forms timed at load").
WORKING_SET_MARGIN = 0.1
# Beyond this share of the L3 a model's padded batch-1 layouts stream from DRAM on any host,
# where the rules' answer (every layer compact, prefetched: the fewest bytes) holds; not timed.
WORKING_SET_MAX_SHARE = 4.0
# Timing budget per configuration there (it runs once per host and set of layouts).
WORKING_SET_BUDGET_S = 0.1
MAX_ROUNDS = 50
# Least speed-up over the size rule's step width a timed conv step width needs to replace it,
# and the timing budget per width (a model has tens of conv shapes, all timed at its first load).
CONV_STEP_MARGIN = 0.05
CONV_STEP_BUDGET_S = 0.01
# Convs doing more multiply-adds than this per image (ResNet-50's largest: 47 M at 90%) keep
# the rule: their timing would take seconds at load.
CONV_STEP_MAX_MACS = 1 << 28
# Batch-1 calls within this factor of the serial rule's boundary (spmm.SERIAL_WORK, in
# nonzeros) are timed on one thread and on all, because near it the faster choice changes
# with the host and its load (1024x1024 at 90%, 2.6x the boundary, flipped within an hour:
# benchmarks/README.md, "Batch-1 threads timed at load").
SERIAL_TIMING_FACTOR = 8.0


def enabled() -> bool:
    """False when ``$SPARSIFY_CALIBRATION`` is ``off`` / ``0`` / ``no``."""
    return os.environ.get(ENV, "on").strip().lower() not in ("off", "0", "no", "false")


def cache_dir() -> Path:
    """Where calibration files go (``$SPARSIFY_CACHE_DIR``, else the user's cache dir)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsify"


def host_identity(threads: int) -> dict[str, object]:
    """What a measurement depends on besides the layer: CPU, vector ISA, threads, versions."""
    import numba
    import onnxruntime

    import sparsify
    from sparsify.machine import cpu_model
    from sparsify.kernels import REVISION, isa

    info = isa.host_isa()
    return {"cpu": cpu_model(), "host_cpu": info["host_cpu"], "features": info["host_features"],
            "kernel_variant": info["kernel_variant"], "target": info["target"], "threads": threads,
            "kernels_revision": REVISION,
            "sparsify": sparsify.__version__, "numba": numba.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def choose_batch1_forms(layers: list, threads: int, directory: str | os.PathLike | None = None) -> list[str]:
    """Keep each SparseLinear's sliced-ELL layout only where its batch-1 call beats the
    CSR kernel on this host (timed once per host and cached like the CSR pass's layer
    timings; nothing happens when calibration is off), then choose the layouts' forms
    together (:func:`choose_working_set`) and time again against the CSR kernel each
    layout whose form that changed. Returns one line per timing."""
    from sparsify.kernels import set_threads

    if not enabled() or not any(layer.ell is not None for layer in layers):
        return []
    set_threads(threads)
    cal = Calibrator(threads, directory)
    with cal.exclusive():
        return _choose_batch1_forms(layers, cal, threads)


def _choose_batch1_forms(layers: list, cal: "Calibrator", threads: int) -> list[str]:
    lines = []
    for layer in layers:
        lines += _keep_layout_if_faster(layer, cal)
    before = [_batch1_form(layer) for layer in layers]
    lines += choose_working_set(layers, cal)
    # A form the working-set step switched was not the one timed against the CSR kernel.
    for layer, form in zip(layers, before):
        if layer.ell is not None and _batch1_form(layer) != form:
            lines += _keep_layout_if_faster(layer, cal, " (the form kept together)")
    if threads > 1:
        for layer in layers:
            lines += _choose_batch1_threads(layer, cal, threads)
    return lines


def choose_conv_step_widths(convs: list, threads: int, directory: str | os.PathLike | None = None) -> list[str]:
    """Set each SparseConv2d's step width, for the input size it will see, to the fastest of
    the widths its kernels take on this host, where that beats the size rule's width by
    CONV_STEP_MARGIN (timed once per host and cached like the other timings; nothing happens
    when calibration is off). ``convs`` holds (layer, (C, H, W)) pairs, the input's size at
    batch 1. Returns one line per layer timed."""
    from sparsify.kernels import set_threads

    convs = [(layer, shape) for layer, shape in convs if len(layer.step_widths()) > 1]
    if not enabled() or not convs:
        return []
    set_threads(threads)
    cal = Calibrator(threads, directory)
    lines = []
    with cal.exclusive():
        for layer, (c, h, w) in convs:
            rule = layer.step_width(h, w)
            (kh, kw), (sh, _) = layer.kernel_size, layer.stride
            what = f"conv {layer.out_channels}x{c} {kh}x{kw}/{sh} at {h}x{w}: step width"
            macs = int(layer.weight.nnz) * math.prod(layer.output_size(h, w))
            if macs > CONV_STEP_MAX_MACS:
                lines.append(f"{what} not timed ({macs} multiply-adds a call); by the rule, {rule}")
                continue
            try:
                times, cached = cal.conv_step_widths(layer, (c, h, w))
            except Exception as exc:  # the rule stands; say why nothing was timed
                lines.append(f"{what} not timed ({type(exc).__name__}: {exc}); by the rule, {rule}")
                continue
            best = min(times, key=times.get)
            chosen = best if times[best] < times[rule] * (1 - CONV_STEP_MARGIN) else rule
            layer.set_step_width(h, w, chosen if chosen != rule else None)
            lines.append(f"{what} " + ", ".join(f"{k} {v:.4f} ms" for k, v in sorted(times.items()))
                         + f" (rule {rule}) -> {chosen}{', cached' if cached else ''}")
    return lines


def _choose_batch1_threads(layer, cal: "Calibrator", threads: int) -> list[str]:
    """Run the layer's batch-1 calls on one thread or on all, whichever is faster here,
    where its nonzeros lie within SERIAL_TIMING_FACTOR of the serial rule's boundary
    (elsewhere the rule stands). One line saying so (none when not timed)."""
    from sparsify.kernels import spmm

    nnz = int(layer.weight.nnz)
    boundary = spmm.SERIAL_WORK * (spmm.ELL_SERIAL_SCALE if layer.ell is not None else 1.0)
    if not boundary / SERIAL_TIMING_FACTOR <= nnz <= boundary * SERIAL_TIMING_FACTOR:
        return []
    try:
        m = cal.batch1_threads(layer)
    except Exception as exc:  # the rule stands; say why nothing was timed
        return [f"{layer.weight.shape[0]}x{layer.weight.shape[1]}: batch 1 threads not timed "
                f"({type(exc).__name__}: {exc}); by the rule"]
    serial = m.sparse_ms < m.dense_ms
    layer.set_batch1_serial(serial)
    return [f"{layer.weight.shape[0]}x{layer.weight.shape[1]}: batch 1 on one thread {m.sparse_ms:.4f} ms vs "
            f"{threads} threads {m.dense_ms:.4f} ms -> {'one thread' if serial else f'{threads} threads'}"
            f"{', cached' if m.cached else ''}"]


def _batch1_form(layer) -> tuple | None:
    """The layout and prefetch setting a SparseLinear runs at batch 1 (None: the CSR kernel)."""
    return None if layer.ell is None else (layer.ell, layer.batch1_prefetched)


def _keep_layout_if_faster(layer, cal: "Calibrator", note: str = "") -> list[str]:
    """Keep the layer's sliced-ELL layout, in its current form, only if its batch-1 call
    beats the CSR kernel's here; one line saying so (none without a layout)."""
    timed = cal.batch1(layer)
    if timed is None:
        return []
    form, m = timed
    keep = m.sparse_ms < m.dense_ms
    if not keep:
        layer.set_batch1_layout(None)
    return [f"{layer.weight.shape[0]}x{layer.weight.shape[1]}: sliced ELL {form}{note} {m.sparse_ms:.4f} ms vs "
            f"CSR {m.dense_ms:.4f} ms -> {'ELL' if keep else 'CSR'}{', cached' if m.cached else ''}"]


def choose_working_set(layers: list, cal: "Calibrator") -> list[str]:
    """Time ``layers`` (a model's SparseLinear layers, called one after another at batch 1)
    with their sliced-ELL layouts in the forms the size rules chose (``spmm.fit_batch1_layouts``)
    and in the alternatives: the first k of ``spmm.batch1_forms`` compact for a few k, each
    prefetched or not. Keep the fastest where it beats the rules' by WORKING_SET_MARGIN.
    Timed only where the rules are a guess about this host's caches: the padded layouts
    beyond ``ell.cache_budget()`` and within WORKING_SET_MAX_SHARE of the L3. The outcome
    is cached per host and set of layouts. Returns one line saying what was timed and
    kept (none when nothing was)."""
    from sparsify.kernels import ell, spmm

    running = [layer for layer in layers if layer.ell is not None]
    if not running:
        return []
    sized = [(layer.ell, layer.batch1_prefetched) for layer in running]
    key = "batch1 set " + hashlib.sha256(json.dumps(
        [[*layer.weight.shape, int(layer.weight.nnz), layout.geometry.label, layout.compact, int(layout.nbytes),
          prefetch] for layer, (layout, prefetch) in zip(running, sized)]).encode()).hexdigest()[:16]
    entry, forms = cal.recall(key), None
    cached = ", cached" if entry is not None else ""
    if entry is None:
        try:
            forms = spmm.batch1_forms(running)
            padded = sum(f.padded.nbytes for f in forms)
            entry = {"timed": 0, "layers": len(forms), "padded_bytes": padded}
            if ell.cache_budget() < padded <= WORKING_SET_MAX_SHARE * ell.cache_bytes(3, ell.DEFAULT_L3_BYTES):
                entry.update(_time_working_set(layers, running, sized, forms), timed=1)
        except Exception as exc:  # the rules' forms stand; say why nothing was timed
            _restore(running, sized)
            return [f"batch-1 layouts together: not timed ({type(exc).__name__}: {exc}); as sized"]
        cal.record(key, entry)
    if not entry["timed"]:
        return []
    n, k, prefetch = int(entry["layers"]), int(entry["compacted"]), bool(entry["prefetch"])
    label = ("all padded" if k == 0 else "all compact" if k == n else f"{k} of {n} compact") + (
        ", prefetched" if prefetch else "")
    keep = entry["best_ms"] < (1.0 - WORKING_SET_MARGIN) * entry["sized_ms"]
    if keep:
        spmm.set_batch1_forms(forms or spmm.batch1_forms(running), k, prefetch)
    else:  # the rules' forms, as they were (the timing leaves others)
        _restore(running, sized)
    return [f"batch-1 layouts together ({n}, {entry['padded_bytes'] / 1e6:.1f} MB padded): as sized "
            f"{entry['sized_ms']:.4f} ms, best {label} {entry['best_ms']:.4f} ms -> {label if keep else 'as sized'}"
            f"{cached}"]


def _restore(running: list, sized: list) -> None:
    """Put each layer back on the layout and prefetch setting it had."""
    for layer, (layout, prefetch) in zip(running, sized):
        layer.set_batch1_layout(layout, prefetch)


def _time_working_set(layers: list, running: list, sized: list, forms: list) -> dict[str, float]:
    """The timings behind choose_working_set: the model's batch-1 calls in a row, with the
    layouts as sized and in each alternative; leaves the last alternative in place."""
    from sparsify.kernels import spmm

    n = len(forms)
    choices = [(k, p) for k in sorted({0, n // 4, n // 2, (3 * n) // 4, n}) for p in (False, True)]
    built: dict[int, object] = {}
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(layer.in_features).astype(layer.dtype) for layer in layers]

    def chain():
        for layer, x in zip(layers, inputs):
            layer(x)

    def as_sized():
        _restore(running, sized)

    # The rules' own configuration is timed once, as sized, not again as an alternative.
    state = {id(layer): (layout.compact, prefetch) for layer, (layout, prefetch) in zip(running, sized)}
    choices = [(k, p) for k, p in choices
               if any(state[id(f.layer)] != (i < k, p) for i, f in enumerate(forms))]
    setups = [as_sized] + [lambda k=k, p=p: spmm.set_batch1_forms(forms, k, p, built) for k, p in choices]
    ms = time_configurations(setups, chain, WORKING_SET_BUDGET_S)
    best = min(range(len(choices)), key=lambda i: ms[i + 1])
    return {"sized_ms": ms[0], "best_ms": ms[best + 1], "compacted": choices[best][0],
            "prefetch": int(choices[best][1])}


def _time_block(fn: Callable[[], object], calls: int, into: list[float]) -> float:
    """Time ``calls`` calls of ``fn`` one by one, appending each (seconds) to ``into``;
    returns their sum."""
    total = 0.0
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        into.append(dt)
        total += dt
    return total


def time_configurations(setups: list[Callable[[], object]], call: Callable[[], object],
                        budget_s: float = BUDGET_S) -> list[float]:
    """Median ms of ``call`` after each of ``setups`` (which reconfigure what it runs), in
    rounds that visit the setups in a new random order each: a setup, then calls for
    ~BLOCK_S untimed (the caches settle to that configuration) and ~BLOCK_S timed."""
    samples: list[list[float]] = [[] for _ in setups]
    spent = [0.0] * len(setups)
    per_block = [0] * len(setups)
    order = np.random.default_rng(0)
    rounds = 0
    while rounds < ROUNDS or min(spent) < budget_s:
        for i in order.permutation(len(setups)):
            setups[i]()
            t0 = time.perf_counter()
            call()
            if not per_block[i]:
                per_block[i] = max(2, min(200, int(BLOCK_S / max(time.perf_counter() - t0, 1e-7))))
            for _ in range(per_block[i]):
                call()
            spent[i] += _time_block(call, per_block[i], samples[i])
        rounds += 1
        if rounds >= MAX_ROUNDS:
            break
    return [float(np.median(s) * 1e3) for s in samples]


def kernel_note() -> str:
    """What runs this file's sparse ops on this host: the kernel variant, the compile target and
    the host CPU (for ``sparsify inspect``)."""
    from sparsify.machine import cpu_model
    from sparsify.kernels import isa

    info = isa.host_isa()
    return (f"on this host ({cpu_model()}, {info['host_cpu']}: {', '.join(info['host_features']) or 'no AVX'}) "
            f"sparsify runs these ops on its {isa.describe_variant()}")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One layer's timings on this host (milliseconds, medians) and whether they were cached."""

    sparse_ms: float
    dense_ms: float
    overhead_ms: float
    cached: bool = False

    @property
    def convert(self) -> bool:
        """Convert when the kernel plus the extra ONNX Runtime call beats the dense op."""
        return self.sparse_ms + self.overhead_ms < self.dense_ms

    @property
    def speedup(self) -> float:
        """Dense time over the kernel's plus the extra ONNX Runtime call."""
        return self.dense_ms / max(self.sparse_ms + self.overhead_ms, 1e-9)

    def reason(self, where: str) -> str:
        return (f"measured on {where}: sparse {self.sparse_ms:.4f} ms + {self.overhead_ms:.4f} ms runtime step "
                f"vs dense ONNX Runtime {self.dense_ms:.4f} ms (x{self.speedup:.2f})"
                f"{', cached' if self.cached else ''}")


def time_pair(dense: Callable[[], object], sparse: Callable[[], object]) -> tuple[float, float]:
    """(dense, sparse) median call times in ms, alternating blocks of calls of ~BLOCK_S."""
    fns = (dense, sparse)
    est = []
    for fn in fns:
        fn()
        t0 = time.perf_counter()
        fn()
        est.append(max(time.perf_counter() - t0, 1e-7))
    per_block = [max(1, min(200, int(BLOCK_S / e))) for e in est]
    samples: list[list[float]] = [[], []]
    spent = [0.0, 0.0]
    rounds = 0
    while rounds < ROUNDS or min(spent) < BUDGET_S:
        for i, fn in enumerate(fns):
            spent[i] += _time_block(fn, per_block[i], samples[i])
        rounds += 1
        if rounds >= MAX_ROUNDS:
            break
    return float(np.median(samples[0]) * 1e3), float(np.median(samples[1]) * 1e3)


def _one_node_model(op: str, w: np.ndarray, x_shape: tuple[int, ...], **attrs) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "calibrate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# How deep this process is in Calibrator.exclusive (the file lock is taken at depth 0 only:
# a second flock on another descriptor of the same file would wait for the first).
_HELD = {"depth": 0}
_HELD_LOCK = threading.Lock()


class Calibrator:
    """Measures (or recalls) layers on this host; see the module docstring."""

    def __init__(self, threads: int | None = None, directory: str | os.PathLike | None = None) -> None:
        from sparsify.kernels import get_threads

        self.threads = int(threads) if threads is not None else get_threads()
        self.identity = host_identity(self.threads)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(directory if directory is not None else cache_dir()) / "calibration" / f"{digest}.json"
        self._entries: dict[str, dict[str, float]] = self._load()
        self._dirty = False
        self._overhead: float | None = self._entries.get("ort call", {}).get("ms")

    @property
    def where(self) -> str:
        ident = self.identity
        return f"this host ({ident['cpu']}, {ident['kernel_variant']} kernels, {self.threads} threads)"

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("identity") != self.identity or not isinstance(doc.get("entries"), dict):
            return {}
        return doc["entries"]

    @contextlib.contextmanager
    def exclusive(self) -> Iterator["Calibrator"]:
        """Hold this host's calibration lock (``calibration/.lock`` in the cache folder) with
        the entries other processes saved meanwhile read in, and save on leaving: one process
        times at a time, so that workers started together neither time against each other
        nor each time what another has cached. Re-entrant within a process; without a
        writable cache folder there is nothing shared to guard."""
        from sparsify.fileio import held_lock

        with _HELD_LOCK:
            outer = _HELD["depth"] == 0
            _HELD["depth"] += 1
        try:
            with contextlib.ExitStack() as stack:
                if outer:
                    try:
                        stack.enter_context(held_lock(self.path.parent / ".lock"))
                    except OSError:
                        pass  # not writable: nothing is shared through it
                self._entries = {**self._load(), **self._entries}
                if self._overhead is None:
                    self._overhead = self._entries.get("ort call", {}).get("ms")
                yield self
                self.save()
        finally:
            with _HELD_LOCK:
                _HELD["depth"] -= 1

    def save(self) -> None:
        """Write the cache (atomically) if anything new was measured; a cache that cannot be
        written is skipped, not an error (the decisions are already made)."""
        if not self._dirty:
            return
        from sparsify.errors import SparsifyError
        from sparsify.fileio import atomic_path

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path, SparsifyError) as tmp:
                tmp.write_text(json.dumps({"identity": self.identity, "entries": self._entries}, indent=1,
                                          sort_keys=True))
            self._dirty = False
        except (OSError, SparsifyError):
            pass

    def overhead_ms(self) -> float:
        """One ONNX Runtime call of a trivial graph: what splitting a segment costs."""
        if self._overhead is None:
            from onnx import TensorProto, helper

            from sparsify.ortsession import ort_session

            graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "call",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
            sess = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                               .SerializeToString(), self.threads, spinning=False)
            x = np.zeros((1, 8), np.float32)
            call, _ = time_pair(lambda: sess.run(None, {"x": x}), lambda: None)
            self._overhead = call
            self._entries["ort call"] = {"ms": call}
            self._dirty = True
        return self._overhead

    def recall(self, key: str) -> dict[str, float] | None:
        """The cached entry under ``key`` (None when this host has not measured it)."""
        return self._entries.get(key)

    def record(self, key: str, entry: dict[str, float]) -> None:
        """Cache ``entry`` under ``key`` (written by :meth:`save`)."""
        self._entries[key] = entry
        self._dirty = True

    @property
    def keys(self) -> list[str]:
        return list(self._entries)

    def _recall_or_measure(self, key: str, measure: Callable[[], tuple[float, float]]) -> Measurement:
        entry = self._entries.get(key)
        if entry is not None:
            return Measurement(entry["sparse_ms"], entry["dense_ms"], self.overhead_ms(), cached=True)
        dense_ms, sparse_ms = measure()
        self._entries[key] = {"sparse_ms": sparse_ms, "dense_ms": dense_ms}
        self._dirty = True
        return Measurement(sparse_ms, dense_ms, self.overhead_ms())

    def linear(self, w: np.ndarray, rows: int, blocksize: tuple[int, int] | None = None) -> Measurement:
        """A Linear of weight ``w`` (out, in) on ``rows`` input rows: our SparseLinear (with
        ``blocksize``, our SparseBlockLinear over the BSR of those blocks) against ONNX
        Runtime's MatMul with the dense weight."""
        out_f, in_f = w.shape
        density = np.count_nonzero(w) / max(1, w.size)
        block = f" blocks {blocksize[0]}x{blocksize[1]}" if blocksize else ""
        key = f"linear {out_f}x{in_f} density {density:.2f}{block} rows {rows}"

        def measure() -> tuple[float, float]:
            from sparsify.kernels import CSR, SparseLinear
            from sparsify.kernels.bsr import BSR, SparseBlockLinear
            from sparsify.ortsession import ort_session

            w32 = np.asarray(w, np.float32)
            layer = (SparseBlockLinear(BSR.from_dense(w32, blocksize)) if blocksize
                     else SparseLinear(CSR.from_dense(w32)))
            sess = ort_session(_one_node_model("MatMul", w32.T, (rows, in_f)), self.threads, spinning=False)
            x = np.random.default_rng(0).standard_normal((rows, in_f)).astype(np.float32)
            return time_pair(lambda: sess.run(None, {"x": x}), lambda: layer(x))

        return self._recall_or_measure(key, measure)

    def batch1(self, layer) -> tuple[str, Measurement] | None:
        """Time a SparseLinear's batch-1 call on its sliced-ELL layout against the CSR
        kernel and return ``(what, measurement)`` with the CSR as "dense" side (no
        overhead), or None when the layer has no layout. The layer is left as it was."""
        layout = layer.ell
        if layout is None:
            return None
        prefetch = layer.batch1_prefetched
        form = (f"{layout.geometry.label} {'compact' if layout.compact else 'padded'}"
                f"{' prefetched' if prefetch else ''}")
        out_f, in_f = layer.weight.shape
        key = f"batch1 {out_f}x{in_f} density {layer.weight.density:.2f} {form}"
        entry = self._entries.get(key)
        if entry is not None:
            return form, Measurement(entry["sparse_ms"], entry["dense_ms"], 0.0, cached=True)
        x = np.random.default_rng(0).standard_normal(in_f).astype(layer.dtype)

        def csr_call():
            layer.set_batch1_layout(None)
            try:
                return time_pair(lambda: layer(x), lambda: None)[0]
            finally:
                layer.set_batch1_layout(layout, prefetch)

        csr_ms = csr_call()
        ell_ms = time_pair(lambda: layer(x), lambda: None)[0]
        self._entries[key] = {"sparse_ms": ell_ms, "dense_ms": csr_ms}
        self._dirty = True
        return form, Measurement(ell_ms, csr_ms, 0.0)

    def batch1_threads(self, layer) -> Measurement:
        """Time a SparseLinear's batch-1 call, in its current kernel and form, on one
        thread ("sparse" side) against all threads ("dense" side). The layer is left
        on the rule (``set_batch1_serial(None)``)."""
        out_f, in_f = layer.weight.shape
        layer.set_batch1_serial(None)
        key = f"batch1 threads {out_f}x{in_f} density {layer.weight.density:.2f} {layer.describe_batch1()}"
        entry = self._entries.get(key)
        if entry is not None:
            return Measurement(entry["sparse_ms"], entry["dense_ms"], 0.0, cached=True)
        x = np.random.default_rng(0).standard_normal(in_f).astype(layer.dtype)

        def on(serial: bool):
            def call():
                layer.set_batch1_serial(serial)
                return layer(x)
            return call

        try:
            parallel_ms, serial_ms = time_pair(on(False), on(True))
        finally:
            layer.set_batch1_serial(None)
        self._entries[key] = {"sparse_ms": serial_ms, "dense_ms": parallel_ms}
        self._dirty = True
        return Measurement(serial_ms, parallel_ms, 0.0)

    def conv_step_widths(self, layer, shape: tuple[int, int, int]) -> tuple[dict[int, float], bool]:
        """(step width -> median ms of ``layer`` on one random input of ``shape`` (C, H, W), and
        whether that was cached). The layer is left on its size rule for that input size."""
        c, h, w = shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        key = (f"conv steps {layer.out_channels}x{c}x{kh}x{kw} density {layer.weight.density:.2f} input {c}x{h}x{w} "
               f"strides {[sh, sw]} pads {[ph, pw]} dilations {[dh, dw]} group {layer.groups}")
        entry = self._entries.get(key)
        widths = layer.step_widths()
        if entry is not None and all(str(k) in entry for k in widths):
            return {k: float(entry[str(k)]) for k in widths}, True
        x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(layer.dtype)
        setups = [lambda k=k: layer.set_step_width(h, w, k) for k in widths]
        try:
            times = dict(zip(widths, time_configurations(setups, lambda: layer(x), CONV_STEP_BUDGET_S)))
        finally:
            layer.set_step_width(h, w, None)
        self._entries[key] = {str(k): v for k, v in times.items()}
        self._dirty = True
        return times, False

    def conv(self, w: np.ndarray, x_shape: tuple[int, int, int, int], strides, pads, dilations, group: int,
             blocksize: tuple[int, int] | None = None) -> Measurement:
        """A Conv of weight ``w`` (O, C/g, kh, kw) on an input of ``x_shape`` (N, C, H, W):
        our SparseConv2d (over the CSR, or with ``blocksize`` the BSR of those blocks of
        ``w.reshape(O, -1)``; at its fastest step width, :meth:`conv_step_widths`) against
        ONNX Runtime's Conv."""
        density = np.count_nonzero(w) / max(1, w.size)
        block = f" blocks {blocksize[0]}x{blocksize[1]}" if blocksize else ""
        key = (f"conv {'x'.join(map(str, w.shape))} density {density:.2f}{block} input {'x'.join(map(str, x_shape))} "
               f"strides {list(strides)} pads {list(pads)} dilations {list(dilations)} group {group}")

        def measure() -> tuple[float, float]:
            from sparsify.kernels import CSR, SparseConv2d
            from sparsify.kernels.bsr import BSR
            from sparsify.ortsession import ort_session

            w32 = np.asarray(w, np.float32)
            w2d = w32.reshape(w32.shape[0], -1)
            layer = SparseConv2d(BSR.from_dense(w2d, blocksize) if blocksize else CSR.from_dense(w2d),
                                 kernel_size=w32.shape[2:],
                                 stride=tuple(strides), padding=tuple(pads[:2]), dilation=tuple(dilations),
                                 groups=group)
            sess = ort_session(_one_node_model("Conv", w32, x_shape, strides=list(strides), pads=list(pads),
                                               dilations=list(dilations), group=group), self.threads, spinning=False)
            x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
            if len(layer.step_widths()) > 1:  # at the step width the runtime will time and take here
                times, _ = self.conv_step_widths(layer, tuple(x_shape[1:]))
                layer.set_step_width(x_shape[2], x_shape[3], min(times, key=times.get))
            return time_pair(lambda: sess.run(None, {"x": x}), lambda: layer(x))

        return self._recall_or_measure(key, measure)


__all__ = ["Calibrator", "Measurement", "choose_batch1_forms", "choose_conv_step_widths", "choose_working_set", "time_configurations", "kernel_note", "enabled", "cache_dir", "host_identity", "time_pair", "ENV", "CACHE_ENV"]
