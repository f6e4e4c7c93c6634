"""Sparse ONNX export of a run: dense export, CSR conversion pass, runtime check against ORT.

Called by ``sparsify.export.pipeline.export_run`` for ``--mode sparse``; the pipeline then
verifies the returned runner against the masked torch model before moving the file to
its destination.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from sparsify.errors import ExportError
from sparsify.export.onnx_export import DEFAULT_OPSET, export_onnx
from sparsify.export.verify import VerifyReport, ort_runner, verify
from sparsify.passes.csr import CsrPass, CsrPlan

OPTIONS = ("density_threshold", "target_batch")


def csr_bytes(model: onnx.ModelProto, plan: CsrPlan) -> tuple[int, int]:
    """(bytes of every converted layer's data + indices + indptr initializers, total nonzeros)."""
    sizes = {i.name: len(i.raw_data) if i.raw_data else onnx.numpy_helper.to_array(i).nbytes
             for i in model.graph.initializer}
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


def export_sparse(run: Any, reference: nn.Module, example: tuple[torch.Tensor, ...], tmp: Path,
                  input_names: Sequence[str], output_names: Sequence[str], *, atol: float, rtol: float,
                  opset: int = DEFAULT_OPSET, input_sets: dict[str, Sequence[np.ndarray]] | None = None,
                  onnx_options: dict[str, Any] | None = None, **options: Any) -> tuple[Callable[[Sequence[np.ndarray]], list[np.ndarray]], dict[str, Any]]:
    """Write the sparse ONNX model of ``reference`` to ``tmp``; return (runtime runner, summary).

    ``options``: ``density_threshold`` (float in [0, 1], overrides the measured crossover)
    and ``target_batch`` (int, default 1). Before returning, the sparse runtime is checked
    against the dense export under ONNX Runtime on the run's verification inputs within
    ``atol``/``rtol`` (the user's tolerances) and a VerificationError is raised on a mismatch.
    ``input_sets`` are those verification inputs (computed from the run when not given).
    """
    from sparsify.runtime import Session

    if input_sets is None:
        from sparsify.api import verification_inputs

        input_sets = verification_inputs(run)

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ExportError(f"unknown sparse export option(s) {unknown}; expected {list(OPTIONS)}")
    threshold = options.get("density_threshold")
    target_batch = options.get("target_batch") or 1
    tmp = Path(tmp)
    with tempfile.TemporaryDirectory(prefix="sparsify-dense-") as workdir:
        dense_path = Path(workdir) / "dense.onnx"
        export_onnx(reference, example, dense_path, input_names, output_names, opset=opset, **(onnx_options or {}))
        dense_bytes = dense_path.stat().st_size
        result = CsrPass(threshold, target_batch).call(onnx.load(str(dense_path)))
        try:
            onnx.checker.check_model(result.model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the sparse ONNX model fails onnx.checker: {exc}") from exc
        onnx.save_model(result.model, str(tmp))
        session = Session(tmp, threads=1)
        names = [i.name for i in session.get_inputs()]

        def candidate(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            return session.run(None, {n: np.ascontiguousarray(x) for n, x in zip(names, inputs)})

        report: VerifyReport = verify(ort_runner(dense_path)[0], candidate, input_sets,
                                      "sparse runtime vs dense ONNX in ONNX Runtime", output_names,
                                      atol=atol, rtol=rtol)
        report.raise_if_failed()
    sparse_bytes = tmp.stat().st_size
    csr, nnz = csr_bytes(result.model, result.plan)
    lines = summary_lines(result.plan, dense_bytes, sparse_bytes, csr, nnz)
    if not result.plan.converted:
        lines.append("  note: no layer was converted; the file holds only standard ONNX ops")
    table = report.table().splitlines()
    table[0] = (f"verify the sparse runtime against the dense export in ONNX Runtime "
                f"(atol {report.atol:g}, rtol {report.rtol:g})")
    lines += table
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
    }
    return candidate, extra
