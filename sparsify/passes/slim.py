"""The slim pass: physically remove pruned channels from a captured graph, exactly.

Deciding is separate from rewriting. `decide` reads the masks against the dependency graph
and chooses which channel classes can go (every producer row, bias and norm shift masked;
whole conv groups / heads; tensors keep a rectangular shape) and records why anything that
was masked stays. `slim_model` then slices the parameters, rewrites the shape constants the
graph's ops use (view sizes, split sizes, conv groups, LayerNorm), verifies the result
against the masked model and re-exports it with a dynamic batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from sparsify.errors import PruneError, VerificationError
from sparsify.graph.capture import capture, export_program, plain_copy
from sparsify.graph.depgraph import DepGraph, UnionFind
from sparsify.graph.groups import class_slices, compute_groups
from sparsify.graph.labels import Lab
from sparsify.graph.analysis import analyze
from sparsify.passes.slim_rewrite import fold_constants, remove_dead_code, rewrite_graph, set_tensor
from sparsify.passes.slim_save import load_slim, plain_module, save_slim  # noqa: F401  (public re-export)
from sparsify.passes.slim_stats import count_macs, count_params
from sparsify.tolerance import compare


@dataclass
class SlimReport:
    """Per group: kept/total channels and why masked channels were kept; totals before/after."""

    groups: list[dict] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    max_abs_err: float = 0.0

    def to_dict(self) -> dict:
        return {"groups": self.groups, "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "max_abs_err": self.max_abs_err}

    def __str__(self) -> str:
        lines = [f"slim: params {self.params_before} -> {self.params_after}, "
                 f"MACs/sample {self.macs_before} -> {self.macs_after}, max abs err {self.max_abs_err:.2e}"]
        for g in self.groups:
            unit = "heads" if g["kind"] == "head" else "units"
            s = f"  {g['name']}: {g['kept_units']}/{g['total_units']} {unit} kept " \
                f"({g['kept_channels']}/{g['total_channels']} channels)"
            if g["reasons"]:
                s += "; kept masked channels because: " + "; ".join(g["reasons"])
            lines.append(s)
        return "\n".join(lines)


@dataclass
class SlimResult:
    module: nn.Module
    report: SlimReport
    program: torch.export.ExportedProgram | None = None


@dataclass
class Decision:
    removed: np.ndarray  # bool over vars (by class root)
    reasons: dict[int, str]  # class root -> why a masked class stays
    folds: list = field(default_factory=list)  # (consumer ParamUse, positions): constants to fold


def _zero_positions(masks: dict[str, torch.Tensor], fqn: str, dim: int, size: int) -> np.ndarray:
    m = masks.get(fqn)
    if m is None:
        return np.zeros(size, dtype=bool)
    m = m.to(torch.bool)
    if m.dim() == 0:
        return np.full(size, not bool(m))
    return ~m.transpose(0, dim).reshape(m.shape[dim], -1).any(1).numpy()


def decide(dg: DepGraph, masks: dict[str, torch.Tensor]) -> Decision:
    """Which classes can be removed exactly under `masks`, and why masked ones stay."""
    nv = dg.num_vars()
    root = np.array([dg.uf.find(v) for v in range(nv)], dtype=np.int64)
    slices = class_slices(dg)
    ok = np.ones(nv, dtype=bool)
    wanted = np.zeros(nv, dtype=bool)
    has_producer = np.zeros(nv, dtype=bool)
    reasons: dict[int, str] = {}
    folds: list = []
    for (fqn, dim), roots in slices.items():
        use = dg.uses[(fqn, dim)]
        valid = roots >= 0
        zero = _zero_positions(masks, fqn, dim, len(roots))
        if use.role == "producer":
            has_producer[roots[valid]] = True
            wanted[roots[valid & zero]] = True
        if use.role in ("producer", "affine") or (use.role == "consumer" and use.nz):
            bad = valid & ~zero
            if use.role == "consumer" and use.nz == "const" and use.fold is not None and not use.fold.why_not:
                if bad.any():
                    folds.append((use, bad))  # the constant moves into the consumer's bias
                continue
            for c in np.unique(roots[bad]).tolist():
                if ok[c]:
                    why = "is not masked" if use.role != "consumer" else \
                        "is not masked and the pruned channel is not zero there"
                    if use.role == "consumer" and use.fold is not None and use.fold.why_not:
                        why += f" (no constant fold: {use.fold.why_not})"
                    reasons[c] = f"{fqn} (dim {dim}) {why}"
                ok[c] = False
    for v, why in dg.blocked.items():
        c = root[v]
        if ok[c]:
            reasons[c] = why
        ok[c] = False
    virtual = np.array([o.startswith("<") for o in dg.var_owner], dtype=bool)
    cls_virtual = np.ones(nv, dtype=bool)
    for v in range(nv):
        if not virtual[v]:
            cls_virtual[root[v]] = False
    removable = ok & (has_producer | cls_virtual)
    # units: blocks bind classes
    unit = UnionFind()
    unit.add(nv)
    for _, parts in dg.blocks:
        for p in parts:
            for v in p.tolist()[1:]:
                unit.union(int(root[p[0]]), int(root[v]))
    members: dict[int, list[int]] = {}
    for c in np.unique(root).tolist():
        members.setdefault(unit.find(c), []).append(c)
    removed = np.zeros(nv, dtype=bool)
    for u, cs in members.items():
        real = [c for c in cs if not cls_virtual[c]]
        if real and all(removable[c] for c in cs) and all(wanted[c] for c in real):
            removed[cs] = True
        elif any(wanted[c] for c in real):
            why = next((reasons[c] for c in cs if c in reasons), "part of its unit is not masked")
            for c in real:
                if wanted[c]:
                    reasons.setdefault(c, f"its head/group is not removed whole: {why}")
    # rectangular closure: a tensor whose channels span several axes keeps a full grid
    arrs = [(name, lb.arr) for name, v in dg.labs.items()
            for lb in (v if isinstance(v, list) else [v]) if isinstance(lb, Lab)]
    changed = True
    while changed:
        changed = False
        for name, arr in arrs:
            if sum(s > 1 for s in arr.shape) < 2:
                continue
            r = root[np.where(arr >= 0, arr, 0)]
            keep = ~removed[r] | (arr < 0)
            rect = np.ones_like(keep)
            for a in range(keep.ndim):
                other = tuple(b for b in range(keep.ndim) if b != a)
                rect = rect & keep.any(axis=other, keepdims=True)
            bad = rect & ~keep
            if bad.any():
                for c in np.unique(r[bad]).tolist():
                    for c2 in members[unit.find(c)]:
                        if removed[c2]:
                            removed[c2] = False
                            reasons.setdefault(c2, f"kept so that tensor '{name}' keeps a rectangular shape")
                changed = True
    removed_vars = removed[root]
    fold_plan = []
    for use, bad in folds:
        pos = np.nonzero(bad & removed_vars[np.where(use.labels >= 0, use.labels, 0)])[0]
        if len(pos):
            fold_plan.append((use, pos))
    return Decision(removed_vars, {c: w for c, w in reasons.items() if wanted[c] and not removed[c]}, fold_plan)


def masked_model(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with ``masks`` applied; it shares every tensor the masks already
    hold (zero wherever the mask is), so a folded model costs no weight memory."""
    m = plain_copy(model, share_weights=True)
    by_name: dict[str, torch.Tensor] = {}
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}  # a tied tensor under each of its names
    for mod_name, mod in m.named_modules(remove_duplicate=False):
        for t_name, t in (*mod.named_parameters(recurse=False, remove_duplicate=False),
                          *mod.named_buffers(recurse=False, remove_duplicate=False)):
            qualified = f"{mod_name}.{t_name}" if mod_name else t_name
            by_name[qualified] = t
            holders.setdefault(id(t), []).append((qualified, mod, t_name))
    for k, mk in masks.items():
        if k not in by_name:
            raise PruneError(f"mask '{k}' names no parameter or buffer of the model")
        t = by_name[k]
        if tuple(mk.shape) != tuple(t.shape):
            raise PruneError(f"mask '{k}' has shape {tuple(mk.shape)}, expected {tuple(t.shape)}")
        with torch.no_grad():
            if not torch.count_nonzero(t.masked_fill(mk.bool(), 0)):
                continue
            masked = t.detach() * mk.to(t.dtype)
        names = holders.pop(id(t))
        for qualified, owner, t_name in names:
            set_tensor(owner, t_name, masked)
            masked = by_name[qualified] = getattr(owner, t_name)  # one object for every tied name
        holders[id(by_name[k])] = names
    return m


def _flat(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def slim_model(model: nn.Module, masks: dict[str, torch.Tensor], example_inputs: tuple[torch.Tensor, ...],
               *, verify: bool = True, reexport: bool = True,
               dynamic: Sequence[Sequence[int]] | None = None) -> SlimResult:
    """Remove the channels `masks` prune. The result equals the masked model (it is checked on
    `example_inputs` unless verify=False) and is an exported GraphModule with dynamic batch
    (and the other axes `dynamic` lists per input)."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    masked = masked_model(model, masks)
    cap = capture(masked, example_inputs, dynamic)
    gm = cap.gm
    remove_dead_code(gm)
    dg = analyze(gm)
    dec = decide(dg, masks)
    fold_constants(gm, dec.folds, cap.example_inputs)
    rewrite_graph(gm, dg, dec.removed)
    report = SlimReport(groups=_report(dg, dec, masks))
    inputs = cap.example_inputs
    if verify:
        with torch.no_grad():
            ref = _flat(masked(*inputs))
            got = _flat(gm(*inputs))
        scale = max((r.abs().max().item() for r in ref if r.numel()), default=1.0)
        atol = 1e-4 * max(1.0, scale)  # float32 rounding differs after the rewrite; a real bug is far larger
        checks = [compare(r.numpy(), o.numpy(), atol, 0.0) for r, o in zip(ref, got)]
        worst = max((c[0] for c in checks), default=0.0)
        if len(ref) != len(got) or not all(c[2] for c in checks):
            raise VerificationError(f"slim model differs from the masked model: max abs err {worst:.3e} "
                                    f"(expected <= {atol:.1e}); this is a bug in the slim pass")
        report.max_abs_err = worst
    program = None
    module: nn.Module = gm
    if reexport:
        program = export_program(gm, inputs, dynamic)
        module = plain_module(program)
    one = tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() else x for x in inputs)
    report.params_before = count_params(model)
    report.params_after = count_params(module)
    report.macs_before = count_macs(cap.program.module(), one)
    report.macs_after = count_macs(module, one)
    return SlimResult(module, report, program)


def _report(dg: DepGraph, dec: Decision, masks) -> list[dict]:
    groups = compute_groups(dg)
    out = []
    for g in groups:
        if not g.producers:
            continue
        real = [c for c in g.classes.tolist() if not dg.var_owner[c].startswith("<")]
        if not any(dg.var_owner[v] in masks for v in real) and not any(
                f in masks for f, _, _, _ in g.tensors):
            continue
        kept = sum(1 for c in real if not dec.removed[c])
        units = [u for u in g.units if any(not dg.var_owner[c].startswith("<") for c in u.tolist())]
        kept_units = sum(1 for u in units if not dec.removed[u].all())
        reasons = sorted({dec.reasons[c] for c in real if c in dec.reasons})
        out.append({"name": g.name, "kind": g.kind, "kept_units": kept_units, "total_units": len(units),
                    "kept_channels": kept, "total_channels": len(real), "reasons": reasons[:5]})
    return out
