"""Capture a model once with torch.export (non-strict, dynamic batch) for analysis and rewriting."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsify.errors import ModelError


#: Per input, the axes whose size may change (None: the batch axis only).
DynamicAxes = Sequence[Sequence[int]] | None


@dataclass
class Captured:
    """The exported program and its unlifted GraphModule (get_attr targets are parameter FQNs)."""

    program: torch.export.ExportedProgram
    gm: torch.fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    dynamic: DynamicAxes = None


def _axes(example_inputs: tuple, dynamic: DynamicAxes) -> list[tuple[int, ...]]:
    if dynamic is None:
        return [(0,)] * len(example_inputs)
    if len(dynamic) != len(example_inputs):
        raise ModelError(f"got dynamic axes for {len(dynamic)} inputs, but {len(example_inputs)} example inputs")
    return [tuple(a) for a in dynamic]


def batch_dynamic_shapes(example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicAxes = None,
                         bounds: dict[str, tuple[int, int | None]] | None = None) -> tuple:
    """dynamic_shapes: axis 0 of every tensor input is the shared dynamic batch; every other
    dynamic axis is shared by the inputs that have it at the same size ("seq" for axis 1).
    ``bounds`` gives some of them a (min, max) range by name."""
    bounds = bounds or {}

    def dim(name: str):
        lo, hi = bounds.get(name, (None, None))
        kwargs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        return torch.export.Dim(name, **kwargs)

    batch = dim("batch")
    shared: dict[tuple[int, int], Any] = {}
    out = []
    for x, axes in zip(example_inputs, _axes(example_inputs, dynamic)):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            out.append(None)
            continue
        spec = {}
        for a in axes:
            if a == 0:
                spec[0] = batch
            elif 0 < a < x.dim():
                key = (a, int(x.shape[a]))
                if key not in shared:
                    name = "seq" if a == 1 else f"axis{a}"
                    taken = sum(1 for k in shared if k[0] == a)
                    shared[key] = dim(name if not taken else f"{name}_{taken}")
                spec[a] = shared[key]
        out.append(spec or None)
    return tuple(out)


def widen_batch(example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicAxes = None) -> tuple[torch.Tensor, ...]:
    """Repeat size-1 dynamic axes (batch-1 inputs) to size 2 so export does not specialise them."""
    out = []
    for x, axes in zip(example_inputs, _axes(example_inputs, dynamic)):
        if isinstance(x, torch.Tensor):
            for a in axes:
                if a < x.dim() and x.shape[a] == 1:
                    x = torch.cat([x, x], a)
        out.append(x)
    return tuple(out)


#: Ranges torch inferred for dynamic dims (e.g. seq <= the position table), by module class,
#: input shapes and dynamic axes: later captures of the same model start from them instead of
#: failing once more (each torch.export of a small BERT takes seconds).
_BOUNDS: dict[tuple, dict[str, tuple[int, int | None]]] = {}


def _dim_bounds(shapes) -> dict[str, tuple[int, int | None]]:
    out = {}
    for spec in shapes:
        for d in (spec or {}).values():
            if hasattr(d, "__name__"):
                hi = getattr(d, "max", None)
                out[d.__name__] = (getattr(d, "min", None), hi if isinstance(hi, int) and hi < 2**62 else None)
    return out


def _symbol_names(program: torch.export.ExportedProgram, shapes) -> dict[str, str]:
    """torch's symbol of each dynamic input dim ("s77") -> the name of its Dim ("batch", "seq")."""
    user = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    out: dict[str, str] = {}
    for node, spec in zip(placeholders, shapes):
        val = node.meta.get("val")
        for axis, dim in (spec or {}).items():
            if isinstance(val, torch.Tensor) and axis < val.dim() and not isinstance(val.shape[axis], int):
                out.setdefault(str(val.shape[axis]), getattr(dim, "__name__", str(dim)))
    return out


def export_program(module: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                   dynamic: DynamicAxes = None) -> torch.export.ExportedProgram:
    """torch.export.export(strict=False) with dynamic batch (and other dynamic axes, e.g. a
    sequence); a range torch infers for them (e.g. seq <= the position table) is applied.
    Errors become ModelError."""
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    inputs = widen_batch(tuple(example_inputs), dynamic)
    key = (type(module).__qualname__, tuple(tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)),
           tuple(map(tuple, _axes(inputs, dynamic))))
    known = _BOUNDS.get(key)
    shapes = batch_dynamic_shapes(inputs, dynamic, known)
    for attempt in range(3):
        try:
            program = torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
            _BOUNDS[key] = _dim_bounds(shapes)
            program.sparsify_dim_names = _symbol_names(program, shapes)
            return program
        except Exception as e:  # torch raises many types; report what failed and where
            msg = str(e)
            if known and attempt == 0:  # bounds learnt on another module of this class: start afresh
                shapes = batch_dynamic_shapes(inputs, dynamic)
                continue
            if attempt < 2 and "Suggested fixes:" in msg:
                # only the fix lines: the helper cannot parse the advice torch appends after them
                fixes = msg.split("Suggested fixes:", 1)[1].strip().split("\n\n", 1)[0]
                try:
                    shapes = refine_dynamic_shapes_from_suggested_fixes("Suggested fixes:\n" + fixes, shapes)
                    known = None
                    continue
                except Exception:  # an unparsable suggestion: report the original error
                    pass
            axes = "batch" + (" and other dynamic axes" if dynamic and any(set(a) - {0} for a in dynamic) else "")
            raise ModelError(f"capture: torch.export could not capture {type(module).__name__} with a dynamic {axes} "
                             f"dimension: {type(e).__name__}: {msg.splitlines()[0] if msg else ''}. Check that the "
                             "model runs on its recorded inputs (--input-shape, --example-inputs); a Hugging Face "
                             "model may capture with --model-arg attn_implementation=eager; 'sparsify --debug' "
                             "shows where it failed") from e
    raise AssertionError("unreachable")


def plain_copy(model: nn.Module, share_weights: bool = False) -> nn.Module:
    """An eval-mode deep copy with parametrizations (e.g. mask parametrizations) squashed, so
    parameters carry their plain names ("fc1.weight") and their parametrized values.

    With ``share_weights`` the copy holds the caller's parameter and buffer objects instead of
    copies of them (no weight memory); the caller must then only replace tensors on the copy,
    never change them in place."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())} if share_weights else {}
    m = copy.deepcopy(model, memo).eval()
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


def capture(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicAxes = None) -> Captured:
    """Export an eval-mode copy of `model` that shares its weights; the caller's model is not
    modified, and passes on the result replace weights rather than change them in place."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    m = plain_copy(model, share_weights=True)
    ep = export_program(m, example_inputs, dynamic)
    gm = ep.module()
    return Captured(ep, gm, widen_batch(example_inputs, dynamic), dynamic)
