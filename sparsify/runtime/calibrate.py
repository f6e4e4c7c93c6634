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

:func:`choose_batch1_forms` does the same at load for each Linear's batch-1 kernel: the
sliced-ELL layout the size rules chose against the CSR kernel. Which wins depends on the
host: compiled for AVX2 and run on the Zen 4 VM, the CSR gather kernel beat the compact
AVX2 layout at 4096x4096 90% (0.65 against 1.38 ms) while the AVX-512 layout beat the CSR
(0.39 against 0.79 ms) (benchmarks/results/kernels*.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

ENV = "SPARSIFY_CALIBRATION"
CACHE_ENV = "SPARSIFY_CACHE_DIR"
# Timing budget per side and layer (seconds of calls), in blocks of about BLOCK_S.
BUDGET_S = 0.03
BLOCK_S = 0.002
ROUNDS = 5


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
    timings; nothing happens when calibration is off). Returns one line per layer timed."""
    from sparsify.kernels import set_threads

    if not enabled() or not any(layer.ell is not None for layer in layers):
        return []
    set_threads(threads)
    cal = Calibrator(threads, directory)
    lines = []
    for layer in layers:
        timed = cal.batch1(layer)
        if timed is None:
            continue
        form, m = timed
        keep = m.sparse_ms < m.dense_ms
        if not keep:
            layer.set_batch1_layout(None)
        lines.append(f"{layer.weight.shape[0]}x{layer.weight.shape[1]}: sliced ELL {form} {m.sparse_ms:.4f} ms vs "
                     f"CSR {m.dense_ms:.4f} ms -> {'ELL' if keep else 'CSR'}{', cached' if m.cached else ''}")
    cal.save()
    return lines


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

    def reason(self, where: str) -> str:
        speed = self.dense_ms / max(self.sparse_ms + self.overhead_ms, 1e-9)
        return (f"measured on {where}: sparse {self.sparse_ms:.4f} ms + {self.overhead_ms:.4f} ms runtime step "
                f"vs dense ONNX Runtime {self.dense_ms:.4f} ms (x{speed:.2f})"
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
            for _ in range(per_block[i]):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                samples[i].append(dt)
                spent[i] += dt
        rounds += 1
        if rounds >= 50:
            break
    return float(np.median(samples[0]) * 1e3), float(np.median(samples[1]) * 1e3)


def _one_node_model(op: str, w: np.ndarray, x_shape: tuple[int, ...], **attrs) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "calibrate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


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
        prefetch = bool(layer._ell_call.prefetch)
        form = (f"{layout.geometry.variant} {'compact' if layout.compact else 'padded'}"
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

    def conv(self, w: np.ndarray, x_shape: tuple[int, int, int, int], strides, pads, dilations, group: int,
             blocksize: tuple[int, int] | None = None) -> Measurement:
        """A Conv of weight ``w`` (O, C/g, kh, kw) on an input of ``x_shape`` (N, C, H, W):
        our SparseConv2d (over the CSR, or with ``blocksize`` the BSR of those blocks of
        ``w.reshape(O, -1)``) against ONNX Runtime's Conv."""
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
            return time_pair(lambda: sess.run(None, {"x": x}), lambda: layer(x))

        return self._recall_or_measure(key, measure)


__all__ = ["Calibrator", "Measurement", "choose_batch1_forms", "kernel_note", "enabled", "cache_dir", "host_identity", "time_pair", "ENV", "CACHE_ENV"]
