"""Dense ONNX export of a torch module (masks folded by the caller) with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from sparsify.errors import ExportError
from sparsify.export.verify import set_eval

DEFAULT_OPSET = 18


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def export_onnx(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | Path,
                input_names: Sequence[str], output_names: Sequence[str] | None = None,
                dynamic_batch: bool = True, opset: int = DEFAULT_OPSET,
                dynamic: Sequence[Sequence[int]] | None = None, metadata: dict[str, str] | None = None):
    """Export ``module`` to ``path`` (torch.export-based exporter) and run ``onnx.checker``; returns the ModelProto.

    The batch axis is dynamic (unless ``dynamic_batch=False``), and so is every other axis
    ``dynamic`` lists per input (e.g. a sequence axis, named ``seq`` in the ONNX file).
    ``metadata`` is written to the model's ``metadata_props``."""
    import onnx

    from sparsify.graph.capture import export_program

    set_eval(module)
    inputs = tuple(example_inputs)
    model: nn.Module | torch.export.ExportedProgram = module
    if dynamic_batch:
        # Captured first (a size of 1 would be specialized, so dynamic axes are exported at 2),
        # with the ranges torch infers for the dynamic axes (e.g. seq <= the position table).
        with _quiet(), torch.no_grad():
            model = export_program(module, inputs, dynamic)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, inputs, None, dynamo=True, input_names=list(input_names),
                output_names=list(output_names) if output_names else None,
                opset_version=opset, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; name the model and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {first}") from exc
    proto = program.model_proto
    if dynamic_batch:
        _name_dynamic_dims(proto, model)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported ONNX model for {type(module).__name__} fails onnx.checker: {exc}") from exc
    return proto



def _name_dynamic_dims(proto, program: torch.export.ExportedProgram) -> None:
    """Name the file's dynamic dims as the capture did ("batch", "seq") instead of torch's symbols
    ("s77"), everywhere they appear (inputs, outputs, intermediate shapes)."""
    rename = getattr(program, "sparsify_dim_names", {})
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
