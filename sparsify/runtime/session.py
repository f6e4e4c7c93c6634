"""``Session``: load a sparse ONNX file once, run it many times (mirrors onnxruntime.InferenceSession)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from sparsify.errors import DataError
from sparsify.ort_types import NUMPY_DTYPES, ort_type_string
from sparsify.sparse_ops import LINEAR_OP
from sparsify.runtime.conversion_record import describe_record, host_differs, read_record
from sparsify.runtime.graphcheck import check_graph
from sparsify.runtime.loader import build_sparse_layer, is_sparse_node, load_model
from sparsify.runtime.partition import (GLUE_POLICIES, Step, declared_types, describe, input_dims, partition,
                                        least_rows_per_call, sparse_output_types, whole_model_step)
from sparsify.runtime.profile import Profiler, RunProfile

@dataclasses.dataclass(frozen=True)
class NodeArg:
    """An input or output like ORT's NodeArg: ``name``, ``shape`` (int or str/None per dim), ``type``."""

    name: str
    shape: list[int | str | None]
    type: str

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of ``type`` (None when the model does not say)."""
        return NUMPY_DTYPES.get(self.type)


def _node_arg(vi: onnx.ValueInfoProto) -> NodeArg:
    t = vi.type.tensor_type
    shape: list[int | str | None] = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            shape.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return NodeArg(vi.name, shape, ort_type_string(t.elem_type))


def _dims_match(shape: tuple[int, ...], rank: int, dims: tuple[tuple[int, int], ...]) -> bool:
    """True when ``shape`` has ``rank`` axes and the size ``d`` at each ``(axis, d)`` of ``dims``."""
    if len(shape) != rank:
        return False
    for axis, d in dims:
        if shape[axis] != d:
            return False
    return True


# Session's batch-1 layout choices for Linear layers (SparseLinear's batch1).
BATCH1_POLICIES = ("auto", "csr")


def dead_after(steps: Sequence[Step], outputs: Sequence[str]) -> list[list[str]]:
    """Per step, the values no later step reads and that are not graph outputs: a run drops
    them right after that step (each one's last reader, or its writer if nothing reads it),
    so that later steps write into memory still in cache (benchmarks/README.md, "MobileNetV2
    in the sparse runtime")."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for v in [*step.inputs, *step.outputs]:
            last[v] = i
    keep = set(outputs)
    dead: list[list[str]] = [[] for _ in steps]
    for v, i in last.items():
        if v not in keep:
            dead[i].append(v)
    return dead


def checked_threads(threads: object) -> int:
    """``threads`` as an int within this machine's limit (``kernels.check_threads``); a
    DataError saying what is allowed otherwise."""
    from sparsify.kernels import KernelValueError, check_threads

    try:
        return check_threads(threads)
    except KernelValueError as exc:
        raise DataError(str(exc)) from None


class Session:
    """Run an ONNX file with ``ai.sparsify`` ops: our kernels for those, ONNX Runtime/numpy for the rest.

    Loading validates the graph's structure, every CSR weight and every sparse node's
    attributes against the shapes the file declares (a corrupt file raises ModelFileError
    naming the node and tensor) and builds every kernel object and ORT segment once. A
    run that fails on the arrays reaching a step (a sparse kernel, a glue op, an ORT
    segment) raises KernelInputError naming the node; bad feeds raise DataError. ``threads`` sets the
    Numba kernel threads (per run, on the calling thread) and each ORT segment's intra-op
    threads. ``glue`` picks how small standard ops between sparse ops run: "numpy"
    (default: it costs the same as ORT per glue step and, unlike a 2-thread ORT segment,
    never stalls on thread wake-ups under load; ``benchmarks/results/sparse_e2e.json``) or
    "ort" (every standard segment in its own InferenceSession).

    ``batch1`` picks what Linear layers run at batches 1 to 4: "auto" (default) lays each
    weight out at load as a sliced ELL where that pays (``sparsify.kernels.ell``, a second
    copy of the weight about the size of its CSR), "csr" keeps the CSR alone, for models
    served at larger batches or short of memory (batch 1 then runs the slower CSR SpMV;
    ``benchmarks/results/kernels.json``).

    Threads: the kernels run on Numba's TBB threading layer where the ``tbb`` package is
    installed (``sparsify.kernels.threads.THREADING_LAYER`` says why); ``describe()``
    names the layer in use.

    A file without ``ai.sparsify`` nodes runs as one ONNX Runtime session on the file itself
    (what ``onnxruntime.InferenceSession`` would run, spinning pool included).

    ``profile=True`` times every step of every run and splits ONNX Runtime segments by op
    (``sparsify.runtime.profile``); ``profile()`` returns the breakdown per run,
    ``reset_profile()`` forgets the runs so far (call it after warm-up runs).
    """

    def __init__(self, path: str | Path, threads: int = 1, glue: str = "numpy", batch1: str = "auto",
                 profile: bool = False) -> None:
        from sparsify.kernels import SparseConv2d, SparseLinear, get_threads, set_threads
        from sparsify.kernels.spmm import fit_batch1_layouts

        threads = checked_threads(threads)
        if glue not in GLUE_POLICIES:
            raise DataError(f"glue {glue!r} should be one of {GLUE_POLICIES}")
        if batch1 not in BATCH1_POLICIES:
            raise DataError(f"batch1 {batch1!r} should be one of {BATCH1_POLICIES}")
        self.path = Path(path)
        self.threads = int(threads)
        self._set_threads, self._get_threads = set_threads, get_threads
        model = load_model(self.path)
        where = str(self.path)
        check_graph(model, where)
        record = read_record(model)
        #: Where the file's conversions were decided (None for files that do not say), and
        #: whether that was timed on another host (``conversion_record.host_differs``).
        self.conversion = describe_record(record, self.threads)
        self.conversion_elsewhere = host_differs(record, self.threads)
        inits = {i.name: i for i in model.graph.initializer}
        types = declared_types(model, sparse_output_types(model))
        self.layers = {i: build_sparse_layer(n, inits, where, self._batch1_choice(n, types, batch1))
                       for i, n in enumerate(model.graph.node) if is_sparse_node(n)}
        # The linear layers run one after another: their batch-1 layouts are chosen together,
        # each kept only where it beats the CSR kernel on this host, and their forms (compact
        # or padded, prefetched or not) timed together against the size rules' (cached).
        linears = [layer.kernel for layer in self.layers.values() if isinstance(layer.kernel, SparseLinear)]
        fit_batch1_layouts(linears)
        from sparsify.runtime.calibrate import choose_batch1_forms
        self.batch1_timings = choose_batch1_forms(linears, self.threads)
        init_names = set(inits)
        self._inputs = [_node_arg(vi) for vi in model.graph.input if vi.name not in init_names]
        self._stored_inputs = {vi.name for vi in model.graph.input if vi.name in init_names}
        self._outputs = [_node_arg(vi) for vi in model.graph.output]
        # Per input: name, dtype, rank (None: any) and its fixed (axis, size) pairs, for run's checks.
        self._feed_checks = [(i.name, i.dtype, len(i.shape) if i.shape else None,
                              tuple((a, d) for a, d in enumerate(i.shape) if isinstance(d, int)))
                             for i in self._inputs]
        self._profile_dir = tempfile.TemporaryDirectory(prefix="sparsify-profile-") if profile else None
        prefix = None if self._profile_dir is None else os.path.join(self._profile_dir.name, "ort")
        self.conv_timings: list[str] = []
        if self.layers:
            self.steps: list[Step] = partition(model, self.layers, self.threads, glue, where, prefix, types)
            # Each conv's step width, for the input size the file gives it, timed on this host.
            from sparsify.runtime.calibrate import choose_conv_step_widths
            self.conv_timings = choose_conv_step_widths(
                [(layer.kernel, tuple(dims[1:])) for layer in self.layers.values()
                 if isinstance(layer.kernel, SparseConv2d) and (dims := input_dims(layer, types)) is not None
                 and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:])], self.threads)
        else:
            self.steps = [whole_model_step(self.path, model, self.threads, where, prefix)]
        self._output_names = [o.name for o in self._outputs]
        self._dead_after = dead_after(self.steps, self._output_names)
        self._profiler: Profiler | None = None
        if profile:
            self._profiler = Profiler()
            for i, step in enumerate(self.steps):
                label = ", ".join(step.nodes) + (f" ({step.detail()})" if step.detail else "")
                timer = self._profiler.add(i, step.kind, label, step.op_types or step.nodes, step.session)
                step.run = timer.wrap(step.run)

    @staticmethod
    def _batch1_choice(node: onnx.NodeProto, types: Mapping[str, onnx.TypeProto], batch1: str) -> str:
        """``batch1`` for a Linear node, but "csr" (no batch-1 layout) when the dims the file fixes
        give every call more rows than the batch-1 kernels take (a transformer's 128 tokens at
        any batch): that layout would never run, and it would take memory, load time and the
        batch-1 layouts' shared cache budget (``fit_batch1_layouts``)."""
        from sparsify.kernels.spmm import ELL_ROWS_MAX_BATCH

        if node.op_type != LINEAR_OP or not node.input:
            return batch1
        rows = least_rows_per_call(types, node.input[0])
        return "csr" if rows is not None and rows > ELL_ROWS_MAX_BATCH else batch1

    # -- ORT-like interface -------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        """Graph inputs (initializers excluded), in order."""
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        """Graph outputs, in order."""
        return list(self._outputs)

    def describe(self) -> list[str]:
        """The kernels this host runs (variant, compile target, threading layer), where the
        file's conversions were decided (``conversions: ...``, when the file says), the batch-1
        kernel and conv step-width decisions timed at load (``calibrated: ...``), then one line per execution step
        (sparse kernel, numpy glue or ORT segment)."""
        from sparsify.kernels import isa
        from sparsify.kernels.threads import threading_layer

        head = f"kernels: {isa.describe_variant()}; {self.threads} thread(s), Numba {threading_layer()} layer"
        return ([head] + ([self.conversion] if self.conversion else [])
                + [f"calibrated: {line}" for line in self.batch1_timings + self.conv_timings] + describe(self.steps))

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds after checking names, dtypes, ranks and static dims (DataError naming the input)."""
        # type() first: isinstance against the Mapping ABC alone costs ~0.4 us per call.
        if (type(feeds) is dict or isinstance(feeds, Mapping)) and len(feeds) == len(self._feed_checks):
            out = {}
            for name, dtype, rank, dims in self._feed_checks:
                x = feeds.get(name)
                if not (type(x) is np.ndarray and (dtype is None or x.dtype == dtype)
                        and (rank is None or _dims_match(x.shape, rank, dims))):
                    break
                out[name] = x
            else:
                return out
        return self._explain_feeds(feeds)

    def _explain_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """check_feeds, input by input: raises the DataError that names what is wrong."""
        if not isinstance(feeds, Mapping):
            raise DataError(f"feeds should be a dict of input name -> numpy array, got {type(feeds).__name__}")
        expected = {i.name for i in self._inputs}
        unknown = [k for k in feeds if k not in expected]
        if unknown:
            stored = [k for k in unknown if k in self._stored_inputs]
            note = (f" ({stored} hold values stored in the file, which this runtime always uses)" if stored else "")
            raise DataError(f"{self.path.name}: unknown input(s) {unknown}; the model's inputs are "
                            f"{[i.name for i in self._inputs]}{note}")
        out: dict[str, np.ndarray] = {}
        for spec, (name, dtype, rank, dims) in zip(self._inputs, self._feed_checks):
            if name not in feeds:
                raise DataError(f"{self.path.name}: input {name!r} is missing; expected an array of shape "
                                f"{spec.shape} and type {spec.type}")
            x = feeds[name]
            if isinstance(x, np.ma.MaskedArray):
                raise DataError(f"input {name!r} is a masked array; the model reads every value, masked or not "
                                "(pass x.filled(value) or np.asarray(x))")
            if not isinstance(x, np.ndarray):
                raise DataError(f"input {name!r} should be a numpy array, got {type(x).__name__}")
            x = np.asarray(x)  # np.matrix, np.memmap...: the plain array the kernels take
            if dtype is not None and x.dtype != dtype:
                raise DataError(f"input {name!r} has dtype {x.dtype}; the model expects {dtype} ({spec.type})")
            if rank is not None and not _dims_match(x.shape, rank, dims):
                raise DataError(f"input {name!r} has shape {list(x.shape)}; the model expects {spec.shape} "
                                "(str/None = any size)")
            out[name] = x
        return out

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """Run the model on ``feeds``; return the named outputs (all, in graph order, for None)."""
        values: dict[str, Any] = self.check_feeds(feeds)
        if output_names is None:
            names = self._output_names
        else:
            if isinstance(output_names, (str, bytes)) or not isinstance(output_names, Sequence):
                raise DataError(f"output_names should be None or a list of output names, got {output_names!r}")
            names = list(output_names)
            missing = [n for n in names if n not in self._output_names]
            if missing:
                raise DataError(f"{self.path.name}: unknown output(s) {missing}; the model's outputs are "
                                f"{self._output_names}")
        if self._get_threads() != self.threads:
            self._set_threads(self.threads)
        profiler = self._profiler
        if profiler is not None:
            t0 = time.perf_counter_ns()
        for step, dead in zip(self.steps, self._dead_after):
            results = step.run([values[v] for v in step.inputs])
            values.update(zip(step.outputs, results))
            for v in dead:  # freed while still in cache, for the allocator to hand out again
                del values[v]
        if profiler is not None:
            profiler.run_ns += time.perf_counter_ns() - t0
            profiler.runs += 1
        return [values[n] for n in names]

    def profile(self) -> RunProfile:
        """Time per run by step and by op since the last reset (``Session(..., profile=True)``
        only). The first call ends ONNX Runtime's per-node profiling."""
        if self._profiler is None:
            raise DataError("this Session was not created with profile=True")
        return self._profiler.report()

    def reset_profile(self) -> None:
        """Forget the runs profiled so far (e.g. warm-up runs)."""
        if self._profiler is None:
            raise DataError("this Session was not created with profile=True")
        self._profiler.reset()


__all__ = ["Session", "NodeArg", "BATCH1_POLICIES"]
