"""Rewrite a captured GraphModule after channel removal: slice tensors, fix shape constants.

Given which channel variables are removed, every labelled parameter dim is sliced and every
op whose arguments spell a channel size is updated (view/reshape/expand/unflatten sizes,
split sizes, chunk -> split_with_sizes, slice/select indices, conv groups). A LayerNorm
over a channel dim that lost channels is replaced by one that keeps the original count in
its statistics (the removed channels were exact zeros).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from sparsify.errors import PruneError
from sparsify.graph.depgraph import DepGraph
from sparsify.graph.labels import Lab
from sparsify.graph.rules import op_name


def remove_dead_code(gm: fx.GraphModule) -> None:
    """Erase call_function nodes whose results are unused (e.g. MHA's averaged weights)."""
    changed = True
    while changed:
        changed = False
        for n in reversed(list(gm.graph.nodes)):
            if n.op == "call_function" and not n.users and not _is_mutating(n):
                gm.graph.erase_node(n)
                changed = True
    gm.recompile()


def _is_mutating(n: fx.Node) -> bool:
    schema = getattr(n.target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


def layer_norm_fixed_count(x: torch.Tensor, weight, bias, eps: float, count: int) -> torch.Tensor:
    """LayerNorm over the last dim as if it had `count` entries, the missing ones exact zeros."""
    c = x.shape[-1]
    mean = x.sum(-1, keepdim=True) / count
    d = x - mean
    var = ((d * d).sum(-1, keepdim=True) + (count - c) * mean * mean) / count
    y = d * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _activations(gm: fx.GraphModule, names: set[str], inputs: tuple) -> dict[str, torch.Tensor]:
    """Values of the named nodes on `inputs` (the graph still holds the masked weights)."""
    out: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            val = super().run_node(n)
            if n.name in names:
                out[n.name] = val.detach()
            return val
    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return out


def fold_constants(gm: fx.GraphModule, folds: list, inputs: tuple) -> None:
    """Move constant input channels that are about to be removed into the consumer's bias.

    The channel is constant by construction (masked producers, then elementwise ops only);
    its value is read from one run and checked to be constant over every position."""
    if not folds:
        return
    acts = _activations(gm, {use.fold.input for use, _ in folds}, inputs)
    for use, pos in folds:
        f = use.fold
        x = acts[f.input]
        ch = x.movedim(1, -1) if f.kind == "conv" else x
        ch = ch.reshape(-1, ch.shape[-1])[:, torch.from_numpy(pos)]
        k = ch[0]
        if (ch - k).abs().max() > 1e-6 * (1 + k.abs().max()):
            raise PruneError(f"internal: channel of '{f.input}' feeding '{f.node}' is not constant")
        mod_path, _, name = use.fqn.rpartition(".")
        w = getattr(gm.get_submodule(mod_path) if mod_path else gm, name).detach()
        idx = torch.from_numpy(pos)
        if f.kind == "matmul":
            delta = k @ w[idx, :]
        elif f.kind == "linear":
            delta = w[:, idx] @ k
        else:
            delta = w[:, idx].flatten(2).sum(2) @ k
        b_path, _, b_name = f.bias.rpartition(".")
        bmod = gm.get_submodule(b_path) if b_path else gm
        bias = getattr(bmod, b_name).detach()
        set_tensor(bmod, b_name, bias + delta.to(bias.dtype))


def _kept_along(lab: Lab, removed: np.ndarray) -> list[np.ndarray | None]:
    """Per arr axis: bool keep vector (None when the axis is not labelled)."""
    arr = lab.arr
    keep = ~removed[np.where(arr >= 0, arr, 0)] | (arr < 0)
    out = []
    for a in range(arr.ndim):
        if arr.shape[a] == 1:
            out.append(None)
            continue
        other = tuple(b for b in range(arr.ndim) if b != a)
        out.append(keep.any(axis=other) if other else keep)
    return out


def new_sizes(lab: Lab, removed: np.ndarray) -> list:
    """Size of each real dim after removal (None when unchanged)."""
    kept = _kept_along(lab, removed)
    sizes = []
    for d in range(lab.ndim):
        changed = False
        total = 1
        for a, f in zip(lab.axes(d), lab.factors[d]):
            if kept[a] is not None and not kept[a].all():
                changed = True
                total = total * int(kept[a].sum())
            else:
                total = total * f
        sizes.append(total if changed else None)
    return sizes


def _slice_params(gm: fx.GraphModule, dg: DepGraph, removed: np.ndarray) -> None:
    per_fqn: dict[str, list] = {}
    for (fqn, dim), use in dg.uses.items():
        lbl = use.labels
        keep = ~removed[np.where(lbl >= 0, lbl, 0)] | (lbl < 0)
        if not keep.all():
            per_fqn.setdefault(fqn, []).append((dim, np.nonzero(keep)[0]))
    for fqn, cuts in per_fqn.items():
        mod_path, _, name = fqn.rpartition(".")
        mod = gm.get_submodule(mod_path) if mod_path else gm
        t = getattr(mod, name)
        new = t.detach()
        for dim, idx in cuts:
            new = new.index_select(dim, torch.from_numpy(idx))
        set_tensor(mod, name, new.contiguous())


def set_tensor(mod: nn.Module, name: str, new: torch.Tensor) -> None:
    """Replace ``mod.<name>`` (parameter, buffer or plain attribute) with ``new``.

    Passes replace tensors instead of writing into them: the captured module shares its
    weights with the caller's model (``capture``)."""
    old = getattr(mod, name)
    if isinstance(old, nn.Parameter):
        setattr(mod, name, new if isinstance(new, nn.Parameter) else nn.Parameter(new, requires_grad=old.requires_grad))
    elif name in dict(mod.named_buffers(recurse=False)):
        mod.register_buffer(name, new)
    else:
        setattr(mod, name, new)


def _lab(dg: DepGraph, node) -> Lab | None:
    v = dg.labs.get(node.name) if isinstance(node, fx.Node) else None
    return v if isinstance(v, Lab) else None


def _replace_sizes(sizes: list, news: list, where: str = "") -> list:
    """New size list: changed static sizes replaced; a changed dynamic size becomes -1."""
    out = []
    for s, nw in zip(sizes, news):
        if nw is not None and isinstance(s, int) and s != -1:
            out.append(int(nw))
        elif nw is not None and isinstance(s, fx.Node):
            if -1 in sizes or -1 in out:
                raise PruneError(f"internal: cannot rewrite the dynamic size {s.name} of {where}")
            out.append(-1)
        else:
            out.append(s)
    return out


def _kept_before(lab: Lab, dim: int, removed: np.ndarray, index: int) -> int:
    kept = _kept_along(lab, removed)[lab.axes(dim)[0]]
    if kept is None:
        return index
    return int(kept[:index].sum())


def rewrite_graph(gm: fx.GraphModule, dg: DepGraph, removed: np.ndarray) -> None:
    """Apply the removal: slice parameters and update the shape constants in the graph."""
    if not removed.any():
        return
    _slice_params(gm, dg, removed)
    for n in list(gm.graph.nodes):
        if n.op != "call_function":
            continue
        name = op_name(n)
        out = _lab(dg, n)
        if name in ("view", "reshape", "_unsafe_view", "expand") and out is not None:
            news = new_sizes(out, removed)
            if any(x is not None for x in news):
                n.args = (n.args[0], _replace_sizes(list(n.args[1]), news)) + tuple(n.args[2:])
        elif name == "unflatten" and out is not None:
            news = new_sizes(out, removed)
            d = n.args[1] % len(n.args[0].meta["val"].shape)
            k = len(n.args[2])
            n.args = (n.args[0], n.args[1], _replace_sizes(list(n.args[2]), news[d:d + k]))
        elif name in ("split", "split_with_sizes", "chunk", "unsafe_split"):
            x = _lab(dg, n.args[0])
            outs = dg.labs.get(n.name)
            if x is None or not isinstance(outs, list):
                continue
            dim = (n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)) % x.ndim
            if new_sizes(x, removed)[dim] is None:
                continue
            sizes = []
            for o, val in zip(outs, n.meta["val"]):
                ns = new_sizes(o, removed)[dim] if o is not None else None
                sizes.append(int(ns) if ns is not None else int(val.shape[dim]))
            n.target = torch.ops.aten.split_with_sizes.default
            n.args = (n.args[0], sizes, dim)
            n.kwargs = {}
        elif name in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution"):
            gi = 8 if name in ("convolution", "_convolution") else 6
            if len(n.args) <= gi or int(n.args[gi]) == 1 or out is None:
                continue
            old_out = int(n.meta["val"].shape[1])
            ns = new_sizes(out, removed)[1]
            if ns is not None:
                per_group = old_out // int(n.args[gi])
                args = list(n.args)
                args[gi] = int(ns) // per_group
                n.args = tuple(args)
        elif name == "group_norm" and out is not None:
            ns = new_sizes(out, removed)[1]
            if ns is not None:
                per_group = int(n.meta["val"].shape[1]) // int(n.args[1])
                n.args = (n.args[0], int(ns) // per_group) + tuple(n.args[2:])
        elif name == "unbind":
            x = _lab(dg, n.args[0])
            dim = (n.args[1] if len(n.args) > 1 else 0) % x.ndim if x is not None else 0
            if x is not None and new_sizes(x, removed)[dim] is not None:
                raise PruneError(f"internal: '{n.name}' unbinds a dim that lost channels")
        elif name == "select":
            x = _lab(dg, n.args[0])
            if x is not None and x.varies(n.args[1] % x.ndim):
                dim = n.args[1] % x.ndim
                kept = _kept_along(x, removed)[x.axes(dim)[0]]
                if kept is not None and not kept[n.args[2]]:
                    raise PruneError(f"internal: '{n.name}' selects a removed channel")
                n.args = (n.args[0], n.args[1], _kept_before(x, dim, removed, n.args[2]))
        elif name == "slice":
            x = _lab(dg, n.args[0])
            if x is not None and out is not None:
                dim = (n.args[1] if len(n.args) > 1 else 0) % x.ndim
                if x.varies(dim):
                    size = int(x.factors[dim][0])
                    start = n.args[2] if len(n.args) > 2 else 0
                    start = start + size if start < 0 else start
                    new_start = _kept_before(x, dim, removed, start)
                    ns = new_sizes(out, removed)[dim]
                    length = int(ns) if ns is not None else int(n.meta["val"].shape[dim])
                    n.args = (n.args[0], dim, new_start, new_start + length) + tuple(n.args[4:])
        elif name == "layer_norm" and n.name in dg.ln_nodes:
            x = _lab(dg, n.args[0])
            ns = new_sizes(x, removed)[x.ndim - 1]
            if ns is None:
                continue
            count = int(n.args[1][0])
            w = n.args[2] if len(n.args) > 2 else None
            b = n.args[3] if len(n.args) > 3 else None
            eps = n.args[4] if len(n.args) > 4 else 1e-5
            n.target = layer_norm_fixed_count
            n.args = (n.args[0], w, b, float(eps), count)
            n.kwargs = {}
    gm.graph.lint()
    gm.recompile()
