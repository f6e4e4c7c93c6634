"""Capture a model once with torch.export (non-strict, dynamic batch) for analysis and rewriting."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsify.errors import ModelError


@dataclass
class Captured:
    """The exported program and its unlifted GraphModule (get_attr targets are parameter FQNs)."""

    program: torch.export.ExportedProgram
    gm: torch.fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]


def batch_dynamic_shapes(example_inputs: tuple[torch.Tensor, ...]) -> tuple:
    """dynamic_shapes marking dim 0 of every tensor input as the shared dynamic batch."""
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if isinstance(x, torch.Tensor) and x.dim() > 0 else None
                 for x in example_inputs)


def widen_batch(example_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Repeat batch-1 inputs to batch 2 so export does not specialise the batch to 1."""
    out = []
    for x in example_inputs:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
            x = torch.cat([x, x], 0)
        out.append(x)
    return tuple(out)


def export_program(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export.export(strict=False) with a dynamic batch dimension; errors become ModelError."""
    inputs = widen_batch(tuple(example_inputs))
    try:
        return torch.export.export(module, inputs, dynamic_shapes=batch_dynamic_shapes(inputs),
                                   strict=False)
    except Exception as e:  # torch raises many types; report what failed and where
        raise ModelError(f"torch.export could not capture {type(module).__name__} with a dynamic "
                         f"batch dimension: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def plain_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy with parametrizations (e.g. mask parametrizations) squashed, so
    parameters carry their plain names ("fc1.weight") and their parametrized values."""
    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        if not parametrize.is_parametrized(mod):
            continue
        # not parametrize.remove_parametrizations: it edits the parametrized class, which the
        # copy shares with the caller's model
        with torch.no_grad():
            values = {name: getattr(mod, name).detach().clone() for name in mod.parametrizations.keys()}
        del mod._modules["parametrizations"]
        mod.__class__ = mod.__class__.__bases__[0]
        for name, v in values.items():
            mod.register_parameter(name, nn.Parameter(v))
    return m


def capture(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Captured:
    """Export an eval-mode copy of `model`; the caller's model is not modified."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    m = plain_copy(model)
    ep = export_program(m, example_inputs)
    gm = ep.module()
    return Captured(ep, gm, widen_batch(example_inputs))
