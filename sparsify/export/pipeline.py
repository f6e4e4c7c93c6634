"""Export a run in a chosen mode, verify it, and only then move it to the destination."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from sparsify.artifact import Run
from sparsify.data import random_inputs
from sparsify.inputspec import INPUTS_METADATA
from sparsify.errors import ExportError, in_step
from sparsify.export.onnx_export import DEFAULT_OPSET, export_onnx, release_weights
from sparsify.export.onnx_write import Target, atomic_onnx, file_bytes
from sparsify.export.options import EXTERNAL_DATA_CHOICES, FORMATS, MODES, check_mode_options
from sparsify.export.verify import (VerifyReport, expected_outputs, ort_runner, torch_runner,
                                    verify as verify_outputs)
from sparsify.kernels import kept_threads
from sparsify.masks import fold_masks



def output_names_of(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[str]:
    """``output`` for a single output, ``output_i`` for several."""
    with torch.no_grad():
        out = module(*example)
    n = len(out) if isinstance(out, (tuple, list)) else 1
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def input_metadata(specs) -> dict[str, str]:
    """The ``metadata_props`` entry recording the input specs as JSON (read by ``sparsify bench``)."""
    import json

    return {INPUTS_METADATA: json.dumps([s.to_dict() for s in specs])}


def export_run(run: Run, out: Path, *, fmt: str = "onnx", mode: str = "dense", verify: bool = True,
               atol: float, rtol: float, opset: int | None = None, external_data: str = "auto",
               **options: Any) -> tuple[Path, VerifyReport | None, dict]:
    """Write ``run`` to ``out`` as ``fmt``/``mode``; returns (path, verification report, summary).

    The run is consumed: its masks are folded into its model in place, and the model's
    weights are released once exported, so that no step holds two copies of the weights.
    The masked model's outputs on the verification inputs are computed first and compared
    with the written file's. ``external_data`` (auto, always, never) places ONNX weights in
    ``OUT.data`` beside ``OUT`` (see :mod:`sparsify.export.onnx_write`).
    """
    if mode not in MODES:
        raise ExportError(f"--mode {mode!r} should be one of {', '.join(MODES)}")
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} should be one of {', '.join(FORMATS)}")
    if fmt == "torch" and mode != "slim":
        raise ExportError("--format torch is available for --mode slim only; use --format onnx")
    check_mode_options(options, mode)
    if external_data not in EXTERNAL_DATA_CHOICES:
        raise ExportError(f"--external-data {external_data!r} should be one of {', '.join(EXTERNAL_DATA_CHOICES)}")
    masks = run.masks if mode == "slim" else {}
    reference = fold_masks(run.model).eval()
    example = random_inputs(run.inputs)
    input_names = [s.name for s in run.inputs]
    onnx_options = {"dynamic": [s.dynamic for s in run.inputs], "metadata": input_metadata(run.inputs)}
    output_names = output_names_of(reference, example)
    input_sets = run.verification_inputs() if verify or mode != "dense" else {}
    # The masked model's outputs, computed once: the slim and sparse modes check intermediate
    # results against them, and the final verification uses them again.
    expected = expected_outputs(torch_runner(reference), input_sets)
    summary: dict[str, Any] = {"mode": mode, "format": fmt}
    report: VerifyReport | None = None
    opset = opset or DEFAULT_OPSET
    subject = f"{type(getattr(reference, 'model', reference)).__name__} (run {run.path})"
    hint = ("re-run with 'sparsify --debug' for the traceback; --mode dense exports the masked model without "
            "graph rewrites")
    # The kernels' thread count stays the caller's: verification sessions set their own.
    with kept_threads(), atomic_onnx(out, ExportError) as target, in_step(f"export --mode {mode}", subject, hint):
        if mode == "dense":
            summary["external_data"] = export_onnx(reference, example, target, input_names, output_names,
                                                   opset=opset, external_data=external_data, **onnx_options)
            release_weights(reference)
            candidate = ort_runner(target.path)[0]
        elif mode == "slim":
            from sparsify.export.slim_export import build_slim, module_bytes, write_slim

            dense_bytes = module_bytes(reference)
            result, torch_check = build_slim(reference, masks, example, expected, input_sets, output_names,
                                             atol=atol, rtol=rtol, dynamic=onnx_options["dynamic"])
            release_weights(reference)
            candidate, extra = write_slim(result, torch_check, dense_bytes, example, target, fmt, input_names,
                                          output_names, opset=opset, external_data=external_data,
                                          onnx_options=onnx_options)
            summary.update(extra)
        else:
            from sparsify.export.sparse_export import export_sparse

            with tempfile.TemporaryDirectory(dir=target.path.parent, prefix=".dense-") as work:
                dense = Target(Path(work) / "dense.onnx", "dense.onnx.data")
                export_onnx(reference, example, dense, input_names, output_names, opset=opset, external_data="always",
                            **onnx_options)
                release_weights(reference)
                candidate, extra = export_sparse(dense, target, output_names, atol=atol, rtol=rtol,
                                                 input_sets=input_sets, external_data=external_data, **options)
            summary.update(extra)
        if verify:
            report = verify_outputs(expected, candidate, input_sets, f"{out.name} ({mode})", output_names,
                                    atol=atol, rtol=rtol)
            report.raise_if_failed()
        summary["bytes"] = file_bytes(target)
        summary["data_file"] = target.data_name if target.data_path.exists() else None
    return out, report, summary
