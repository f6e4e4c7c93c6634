"""`export --mode slim`: remove pruned channels and heads, then write ONNX or a pickle-free .pt2."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from sparsify.errors import ExportError
from sparsify.export.onnx_export import export_onnx, release_weights
from sparsify.export.onnx_write import Target, file_bytes
from sparsify.export.verify import ort_runner, torch_runner, verify


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what its ONNX file mostly holds)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def build_slim(reference: nn.Module, masks: dict[str, torch.Tensor], example: tuple[torch.Tensor, ...],
               expected: dict[str, Sequence], input_sets: dict[str, Sequence], output_names: Sequence[str], *,
               atol: float, rtol: float, dynamic: Sequence[Sequence[int]] | None = None) -> tuple[Any, Any]:
    """The slim module of ``reference`` under ``masks``, checked against the masked model's outputs
    ``expected`` before any file is written; returns (slim result, torch check report)."""
    from sparsify.passes.slim import slim_model

    if not masks:
        raise ExportError("the run has no masks: there is nothing to remove (prune it with --structure first)")
    result = slim_model(reference, masks, example, dynamic=dynamic)
    torch_check = verify(expected, torch_runner(result.module), input_sets, "slim torch module", output_names,
                         atol=atol, rtol=rtol)
    torch_check.raise_if_failed()
    return result, torch_check


def write_slim(result: Any, torch_check: Any, dense_bytes: int, example: tuple[torch.Tensor, ...],
               target: Target, fmt: str, input_names: Sequence[str], output_names: Sequence[str], *,
               opset: int, external_data: str = "auto",
               onnx_options: dict[str, Any] | None = None) -> tuple[Callable, dict[str, Any]]:
    """Write the slim module to ``target`` as ONNX or a pickle-free .pt2; returns (candidate runner, summary)."""
    from sparsify.passes.slim import load_slim, save_slim

    slim_weights = module_bytes(result.module)
    if fmt == "onnx":
        export_onnx(result.module, example, target, input_names, output_names, opset=opset,
                    external_data=external_data, **(onnx_options or {}))
        result.program = None  # it holds the weights too; the .pt2 form (below) is the only reader
        release_weights(result.module)
        candidate = ort_runner(target.path)[0]
    else:
        save_slim(result, target.path)
        candidate = torch_runner(load_slim(target.path))
    rep = result.report
    slim_bytes = file_bytes(target)
    lines = str(rep).splitlines()
    lines.append(f"slim torch module vs masked model: max abs err {torch_check.max_abs:.2e}")
    lines.append(f"weights: dense {dense_bytes:,} bytes → slim {slim_weights:,} bytes "
                 f"({slim_weights / max(1, dense_bytes):.2f}×), file {slim_bytes:,} bytes; "
                 f"params {rep.params_after / max(1, rep.params_before):.2f}×, "
                 f"MACs {rep.macs_after / max(1, rep.macs_before):.2f}×")
    return candidate, {
        "lines": lines, "groups": rep.groups, "params_before": rep.params_before, "params_after": rep.params_after,
        "macs_before": rep.macs_before, "macs_after": rep.macs_after, "dense_weight_bytes": dense_bytes,
        "slim_weight_bytes": slim_weights, "slim_bytes": slim_bytes, "torch_max_abs": torch_check.max_abs,
    }
