"""`export --mode slim`: remove pruned channels and heads, then write ONNX or a pickle-free .pt2."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from sparsify.artifact import Run
from sparsify.errors import ExportError
from sparsify.export.onnx_export import export_onnx
from sparsify.export.verify import ort_runner, torch_runner, verify


def _dense_onnx_bytes(reference: nn.Module, example: tuple[torch.Tensor, ...], where: Path,
                      input_names: Sequence[str], output_names: Sequence[str], opset: int,
                      onnx_options: dict[str, Any]) -> int:
    """Size of the dense (masked, unslimmed) ONNX export, for the before/after comparison."""
    with tempfile.TemporaryDirectory(dir=where) as d:
        path = Path(d) / "dense.onnx"
        export_onnx(reference, example, path, input_names, output_names, opset=opset, **onnx_options)
        return path.stat().st_size


def export_slim(run: Run, reference: nn.Module, example: tuple[torch.Tensor, ...], tmp: Path, fmt: str,
                input_names: Sequence[str], output_names: Sequence[str], *, opset: int,
                atol: float, rtol: float, input_sets: dict[str, Sequence],
                onnx_options: dict[str, Any] | None = None) -> tuple[Callable, dict[str, Any]]:
    """Slim ``reference`` by the run's masks and write it to ``tmp``; returns (candidate runner, summary)."""
    from sparsify.passes.slim import load_slim, save_slim, slim_model

    masks = run.masks
    if not masks:
        raise ExportError(f"run {run.path} has no masks: there is nothing to remove (prune it with --structure first)")
    onnx_options = dict(onnx_options or {})
    result = slim_model(reference, masks, example, dynamic=onnx_options.get("dynamic"))
    # The slim torch module itself must match the masked model, before any file is written.
    torch_check = verify(torch_runner(reference), torch_runner(result.module), input_sets,
                         "slim torch module", output_names, atol=atol, rtol=rtol)
    torch_check.raise_if_failed()
    if fmt == "onnx":
        export_onnx(result.module, example, tmp, input_names, output_names, opset=opset, **onnx_options)
        candidate = ort_runner(tmp)[0]
    else:
        save_slim(result, tmp)
        candidate = torch_runner(load_slim(tmp))
    rep = result.report
    dense_bytes = _dense_onnx_bytes(reference, example, tmp.parent, input_names, output_names, opset, onnx_options)
    slim_bytes = tmp.stat().st_size
    lines = str(rep).splitlines()
    lines.append(f"slim torch module vs masked model: max abs err {torch_check.max_abs:.2e}")
    lines.append(f"file size: dense ONNX {dense_bytes:,} bytes → slim {fmt} {slim_bytes:,} bytes "
                 f"({slim_bytes / max(1, dense_bytes):.2f}×); params {rep.params_after / max(1, rep.params_before):.2f}×, "
                 f"MACs {rep.macs_after / max(1, rep.macs_before):.2f}×")
    return candidate, {
        "lines": lines, "groups": rep.groups, "params_before": rep.params_before, "params_after": rep.params_after,
        "macs_before": rep.macs_before, "macs_after": rep.macs_after, "dense_onnx_bytes": dense_bytes,
        "slim_bytes": slim_bytes, "torch_max_abs": torch_check.max_abs,
    }
