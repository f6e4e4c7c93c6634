"""Export a run in a chosen mode, verify it, and only then move it to the destination."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from sparsify.artifact import Run
from sparsify.data import INPUTS_METADATA, random_inputs
from sparsify.errors import ExportError, in_step
from sparsify.export.onnx_export import DEFAULT_OPSET, export_onnx
from sparsify.export.verify import VerifyReport, ort_runner, torch_runner, verify as verify_outputs
from sparsify.fileio import atomic_path

MODES = ("dense", "slim", "sparse")
FORMATS = ("onnx", "torch")


def output_names_of(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[str]:
    """``output`` for a single output, ``output_i`` for several."""
    with torch.no_grad():
        out = module(*example)
    n = len(out) if isinstance(out, (tuple, list)) else 1
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]




def input_metadata(specs) -> dict[str, str]:
    """The ``metadata_props`` entry recording the input specs as JSON."""
    import json

    return {INPUTS_METADATA: json.dumps([s.to_dict() for s in specs])}


def export_run(run: Run, out: Path, *, fmt: str = "onnx", mode: str = "dense", verify: bool = True,
               atol: float, rtol: float, opset: int | None = None, **options: Any) -> tuple[Path, VerifyReport | None, dict]:
    """Write ``run`` to ``out`` as ``fmt``/``mode``; returns (path, verification report, summary)."""
    from sparsify.api import reference_module, verification_inputs

    if mode not in MODES:
        raise ExportError(f"--mode {mode!r} should be one of {', '.join(MODES)}")
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} should be one of {', '.join(FORMATS)}")
    if fmt == "torch" and mode != "slim":
        raise ExportError("--format torch is available for --mode slim only; use --format onnx")
    reference = reference_module(run)
    example = random_inputs(run.inputs)
    input_names = [s.name for s in run.inputs]
    onnx_options = {"dynamic": [s.dynamic for s in run.inputs], "metadata": input_metadata(run.inputs)}
    output_names = output_names_of(reference, example)
    # Computed once (seeded random batches, plus real data when the run knows it): the slim and
    # sparse modes check intermediate results on them, the final verification uses them again.
    input_sets = verification_inputs(run) if verify or mode != "dense" else {}
    summary: dict[str, Any] = {"mode": mode, "format": fmt}
    report: VerifyReport | None = None
    subject = f"{type(getattr(reference, 'model', reference)).__name__} (run {run.path})"
    hint = ("re-run with 'sparsify --debug' for the traceback; --mode dense exports the masked model without "
            "graph rewrites")
    with atomic_path(out, ExportError) as tmp, in_step(f"export --mode {mode}", subject, hint):
        candidate: Callable | None = None
        if mode == "dense":
            export_onnx(reference, example, tmp, input_names, output_names, opset=opset or DEFAULT_OPSET,
                        **onnx_options)
            candidate = ort_runner(tmp)[0]
        elif mode == "slim":
            from sparsify.export.slim_export import export_slim

            candidate, extra = export_slim(run, reference, example, tmp, fmt, input_names, output_names,
                                           opset=opset or DEFAULT_OPSET, atol=atol, rtol=rtol,
                                           input_sets=input_sets, onnx_options=onnx_options, **options)
            summary.update(extra)
        else:
            from sparsify.export.sparse_export import export_sparse

            candidate, extra = export_sparse(run, reference, example, tmp, input_names, output_names,
                                             atol=atol, rtol=rtol, opset=opset or DEFAULT_OPSET,
                                             input_sets=input_sets, onnx_options=onnx_options, **options)
            summary.update(extra)
        if verify:
            report = verify_outputs(torch_runner(reference), candidate, input_sets,
                                    f"{out.name} ({mode})", output_names, atol=atol, rtol=rtol)
            report.raise_if_failed()
        summary["bytes"] = tmp.stat().st_size
    return out, report, summary
