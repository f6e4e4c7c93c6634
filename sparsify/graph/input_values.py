"""Valid values of integer inputs, read from what they feed in the captured graph.

An integer input that indexes a table (``embedding``, ``index_select``, ``index``) may take the
values ``[0, rows)`` of the smallest table it indexes; one that is only compared, converted to
float or bool and combined arithmetically (an attention mask) is a 0/1 mask when its name
says so, and otherwise takes 0/1. Ops that move values without changing them (views, slices,
copies to another integer dtype) are followed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import fx, nn

from sparsify.data import random_inputs
from sparsify.inputspec import InputSpec
from sparsify.graph.capture import capture

#: Ops whose output holds the same integer values as their first input.
VALUE_PRESERVING = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "expand", "slice", "select",
                    "clone", "contiguous", "alias", "detach", "flatten", "lift_fresh_copy", "permute",
                    "transpose", "t", "repeat", "to", "_to_copy", "type_as"}


def _op(n: fx.Node) -> str:
    from sparsify.graph.rules import op_name

    return op_name(n)


def _integer(n: fx.Node) -> bool:
    val = n.meta.get("val")
    return isinstance(val, torch.Tensor) and not val.is_floating_point() and val.dtype != torch.bool


def _table(gm: fx.GraphModule, n) -> tuple[str, torch.Size] | None:
    if isinstance(n, fx.Node) and n.op == "get_attr":
        mod_path, _, name = n.target.rpartition(".")
        t = getattr(gm.get_submodule(mod_path) if mod_path else gm, name)
        return n.target, t.shape
    val = n.meta.get("val") if isinstance(n, fx.Node) else None
    return (n.name, val.shape) if isinstance(val, torch.Tensor) else None


def index_uses(gm: fx.GraphModule, node: fx.Node) -> list[tuple[int, str]]:
    """(rows, what) for every table ``node``'s values index, following value-preserving ops."""
    found: list[tuple[int, str]] = []
    seen: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        for user in n.users:
            name = _op(user)
            if name == "embedding" and len(user.args) > 1 and user.args[1] is n:
                tab = _table(gm, user.args[0])
                if tab:
                    found.append((int(tab[1][0]), f"indexes embedding '{tab[0]}' of {int(tab[1][0])} rows"))
            elif name == "index_select" and len(user.args) > 2 and user.args[2] is n:
                tab = _table(gm, user.args[0])
                if tab:
                    dim = int(user.args[1]) % len(tab[1])
                    found.append((int(tab[1][dim]), f"indexes '{tab[0]}' along dim {dim}"))
            elif name == "index" and len(user.args) > 1 and n in list(user.args[1]):
                tab = _table(gm, user.args[0])
                if tab:
                    dim = list(user.args[1]).index(n)
                    found.append((int(tab[1][dim]), f"indexes '{tab[0]}' along dim {dim}"))
            elif name in VALUE_PRESERVING and user.args and user.args[0] is n and _integer(user):
                todo.append(user)
    return found


def derive_input_values(model: nn.Module, specs: Sequence[InputSpec]) -> list[InputSpec]:
    """The specs with every integer input's valid values filled in (see the module docstring)."""
    todo = [i for i, s in enumerate(specs) if s.is_integer and s.values == "normal"]
    if not todo:
        return list(specs)
    # zeros are valid for every index and every mask: the capture only needs shapes
    probe = [dataclasses.replace(s, values="index", low=0, high=1) if s.is_integer else s for s in specs]
    cap = capture(model, random_inputs(probe), [s.dynamic for s in specs])
    placeholders = [n for n in cap.gm.graph.nodes if n.op == "placeholder"]
    out = list(specs)
    for i in todo:
        spec = specs[i]
        uses = index_uses(cap.gm, placeholders[i]) if i < len(placeholders) else []
        if uses:
            rows, what = min(uses)
            out[i] = dataclasses.replace(spec, values="index", low=0, high=rows, source=what)
        elif "mask" in spec.name.lower():
            out[i] = dataclasses.replace(spec, values="mask", source="an attention mask: 1 keeps a position")
        else:
            out[i] = dataclasses.replace(spec, values="index", low=0, high=2,
                                         source="indexes no table in the model; 0/1 assumed")
    return out
