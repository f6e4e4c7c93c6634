"""Sparse ONNX export: CSR conversion pass over a dense export, runtime check against ORT.

Called by ``sparsify.export.pipeline.export_run`` for ``--mode sparse`` once the masked
model is exported dense; the pipeline then verifies the returned runner against the masked
torch model's outputs before moving the file to its destination.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from sparsify.errors import ExportError
from sparsify.export.onnx_export import check_onnx
from sparsify.export.options import SPARSE_ONLY
from sparsify.export.onnx_write import Target, file_bytes, tensor_nbytes, use_external_data, weight_bytes, write_onnx
from sparsify.export.verify import VerifyReport, expected_outputs, ort_runner, verify
from sparsify.limits import ENV_MAX_BYTES, human_bytes, memory_limit
from sparsify.progress import LARGE_BYTES, bar
from sparsify.export.sparse_speed import Tried, fit_whole_model, step_saving_layers, time_against_dense, timing_feeds
from sparsify.passes.csr import CsrPass, CsrPlan, PassResult, rewrite_csr
from sparsify.runtime.calibrate import enabled as calibration_enabled
from sparsify.runtime.conversion_record import CONVERSION_METADATA, conversion_record

OPTIONS = SPARSE_ONLY


def csr_bytes(model: onnx.ModelProto, plan: CsrPlan) -> tuple[int, int]:
    """(bytes of every converted layer's data + indices + indptr initializers, total nonzeros)."""
    sizes = {i.name: tensor_nbytes(i) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.domain == "ai.sparsify":
            total += sum(sizes.get(v, 0) for v in node.input[1:4])
    return total, sum(d.nnz or 0 for d in plan.converted)


def summary_lines(plan: CsrPlan, dense_bytes: int, sparse_bytes: int, csr: int, nnz: int) -> list[str]:
    """Human-readable lines for the CLI: per layer converted or not and why, sizes."""
    lines = [f"sparse export: {len(plan.converted)} of {len(plan.decisions)} layers converted to CSR "
             f"(target batch {plan.target_batch}"
             + (f", density threshold {plan.density_threshold:g})" if plan.density_threshold is not None
                else ", measured density thresholds)")]
    lines += [f"  {line}" for line in plan.lines()]
    if nnz:
        lines.append(f"  CSR weights: {nnz:,} nonzeros in {csr:,} bytes = {csr / nnz:.2f} bytes per nonzero "
                     "(values + column indices + row pointers)")
    lines.append(f"  file size {sparse_bytes:,} bytes vs {dense_bytes:,} bytes for the dense export "
                 f"({sparse_bytes / max(1, dense_bytes):.1%})")
    return lines


def export_sparse(dense: Target, target: Target, output_names: Sequence[str], *, atol: float, rtol: float,
                  input_sets: dict[str, Sequence[np.ndarray]], external_data: str = "auto",
                  **options: Any) -> tuple[Callable[[Sequence[np.ndarray]], list[np.ndarray]], dict[str, Any]]:
    """Convert the dense ONNX model at ``dense`` to CSR and write it to ``target``; return (runtime runner, summary).

    ``options``: ``density_threshold`` (float in [0, 1], overrides the measured crossover),
    ``target_batch`` (int, default 1) and ``target_threads`` (the kernels' thread count the
    layers are timed at; default the caller's, which this sets: callers keep their own with
    ``kernels.kept_threads``). The dense model's weights are read one layer at a
    time. Before returning, the sparse runtime is checked against the dense model under ONNX
    Runtime on ``input_sets`` within ``atol``/``rtol`` (the user's tolerances), one model in
    memory at a time, and a VerificationError is raised on a mismatch. With measured
    decisions (no ``density_threshold``, host calibration on), the converted model is first
    timed as a whole against the dense one and fewer layers converted where it loses
    (``sparse_speed``), when both fit in memory together (``sparsify.limits``).
    """
    from sparsify.kernels import get_threads
    from sparsify.runtime import Session

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ExportError(f"unknown sparse export option(s) {unknown}; expected {list(OPTIONS)}")
    threshold = options.get("density_threshold")
    target_batch = options.get("target_batch") or 1
    _set_target_threads(options.get("target_threads"))
    dense_bytes = file_bytes(dense)
    dense_model = onnx.load(str(dense.path), load_external_data=False)
    weights = weight_bytes(dense_model)
    with bar(2 * weights, "convert to CSR", large=weights >= LARGE_BYTES) as shown:
        result = CsrPass(threshold, target_batch).call(dense_model, base_dir=dense.path.parent, progress=shown.update)
    check_whole = threshold is None and bool(result.plan.converted) and calibration_enabled()
    # Found on the dense graph while it is loaded (the check's candidates are written from the file).
    extra = step_saving_layers(result.plan, dense_model.graph.node) if check_whole else []
    del dense_model
    record = conversion_record(get_threads(), target_batch, threshold, threshold is None and calibration_enabled())
    external = _write(result.model, dense, target, external_data, record)
    whole: list[Tried] = []
    whole_skipped = None
    if check_whole:
        # Both models are held at once: ORT's with its packed weight copies, ours with its layouts.
        need = 2 * weights + 3 * weight_bytes(result.model)
        if need <= memory_limit():
            result, external, whole, whole_skipped = _check_whole_model(result, external, dense, target,
                                                                        external_data, input_sets, target_batch,
                                                                        record, extra)
        else:
            whole_skipped = (f"  whole model not timed against the dense export: both at once would take about "
                             f"{human_bytes(need)}, more than the memory limit of {human_bytes(memory_limit())} "
                             f"(set {ENV_MAX_BYTES} to raise it)")
    csr, nnz = csr_bytes(result.model, result.plan)
    dense_outputs = expected_outputs(ort_runner(dense.path)[0], input_sets)
    session = Session(target.path, threads=1)
    names = [i.name for i in session.get_inputs()]

    def candidate(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, {n: np.ascontiguousarray(x) for n, x in zip(names, inputs)})

    report: VerifyReport = verify(dense_outputs, candidate, input_sets, "the sparse runtime", output_names,
                                  atol=atol, rtol=rtol, reference_name="the dense export in ONNX Runtime")
    report.raise_if_failed()
    sparse_bytes = file_bytes(target)
    lines = summary_lines(result.plan, dense_bytes, sparse_bytes, csr, nnz)
    if whole:
        total = len(result.plan.eligible)
        lines.append(f"  whole model at batch {target_batch}, timed against the dense export: "
                     + "; ".join(t.describe(total) for t in whole)
                     + f" -> {len(result.plan.converted)} converted")
    if whole_skipped:
        lines.append(whole_skipped)
    if not result.plan.converted:
        lines.append("  note: no layer was converted; the file holds only standard ONNX ops")
    lines += report.table().splitlines()
    extra = {
        "lines": lines,
        "converted": [d.to_dict() for d in result.plan.converted],
        "skipped": [d.to_dict() for d in result.plan.skipped],
        "density_threshold": threshold,
        "target_batch": target_batch,
        "dense_bytes": dense_bytes,
        "sparse_bytes": sparse_bytes,
        "csr_bytes": csr,
        "nonzeros": nnz,
        "bytes_per_nonzero": csr / nnz if nnz else None,
        "runtime_steps": session.describe(),
        "runtime_vs_ort": report.to_dict(),
        "external_data": external,
        "whole_model": [dataclasses.asdict(t) for t in whole],
    }
    return candidate, extra


def _set_target_threads(threads: int | None) -> None:
    """Run the kernels on ``threads`` threads from here on (None: leave them), or ExportError."""
    from sparsify.kernels import KernelValueError, set_threads

    if threads is None:
        return
    try:
        set_threads(threads)
    except KernelValueError as exc:
        raise ExportError(f"--target-threads {threads!r}: {exc}") from None


def _write(model: onnx.ModelProto, dense: Target, target: Target, external_data: str, record: str) -> bool:
    """Write the sparse ``model`` (its dense weights read beside ``dense``) to ``target`` with
    ``record`` (``conversion_record``) in its metadata, and check it; returns whether its
    weights went to external data."""
    props = {p.key: p.value for p in model.metadata_props}
    props[CONVERSION_METADATA] = record
    onnx.helper.set_model_props(model, props)
    sparse_weights = weight_bytes(model)
    external = use_external_data(sparse_weights, external_data, "the sparse model")
    with bar(sparse_weights, f"write {target.path.name}", large=sparse_weights >= LARGE_BYTES) as shown:
        write_onnx(model, dense.path.parent, target, external=external,
                   progress=lambda _name, done, _total: shown.update(done - shown.n))
    if not external:  # a data file a previous candidate wrote would be moved beside the output
        target.data_path.unlink(missing_ok=True)
    check_onnx(target.path, "the sparse ONNX model")
    return external


def _check_whole_model(result: PassResult, external: bool, dense: Target, target: Target, external_data: str,
                       input_sets: dict[str, Sequence[np.ndarray]], target_batch: int, record: str,
                       extra: Sequence[str] = ()) -> tuple[PassResult, bool, list[Tried], str | None]:
    """The conversion kept after timing the whole model (``sparse_speed.fit_whole_model``; ``extra``: the
    layers it may convert too, ``sparse_speed.step_saving_layers``),
    ``result`` being written to ``target`` already (``external``: its weights in external
    data; ``record``: the metadata every candidate carries): the pass result at ``target``,
    whether its weights are external, what was timed,
    and why nothing was (None when it was). A timing that fails leaves ``result`` as planned."""
    from sparsify.kernels import get_threads
    from sparsify.ortsession import ort_session

    threads = get_threads()
    dense_session = ort_session(str(dense.path), threads)
    feeds = timing_feeds([i.name for i in dense_session.get_inputs()], input_sets, target_batch)
    written = {"model": result.model, "external": external}

    def write(plan: CsrPlan) -> None:
        model = rewrite_csr(onnx.load(str(dense.path), load_external_data=False), plan, dense.path.parent)
        written["model"], written["external"] = model, _write(model, dense, target, external_data, record)

    def time_file(converted: int) -> Tried:
        return time_against_dense(dense_session, target.path, feeds, threads, converted)

    try:
        plan, tried = fit_whole_model(result.plan, write, time_file(len(result.plan.converted)), time_file, extra)
    except Exception as exc:  # a best-effort step: the per-layer decisions stand
        write(result.plan)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (result, bool(written["external"]), [],
                f"  whole model not timed against the dense export ({type(exc).__name__}: {first}); "
                "the layers stay as the per-layer timings decided")
    if plan is not result.plan:
        result = PassResult(written["model"], bool(plan.converted), plan)
    return result, bool(written["external"]), tried, None
