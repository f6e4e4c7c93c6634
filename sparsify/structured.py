"""Plan structured pruning: which channels / heads of each coupled group to remove.

`plan_structured` captures the model once, builds the dependency graph, scores every
pruning unit (a channel, a conv group, an attention head) over all tensors of its group,
selects the units to prune and returns a printable `StructuredPlan` whose masks cover the
whole group (producer rows and bias, norm scale and shift, every consumer's input slice).
Nothing in the model changes.

`structure="channel"` prunes channels of conv/linear layers, FFN neurons and embedding dims
(groups without attention heads); `structure="head"` prunes whole attention heads only.
To prune heads and FFN neurons together, make two plans (the second with
`targets=` naming the FFN layers) and merge their masks with `merge_masks`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from sparsify.errors import PruneError, in_step
from sparsify.graph.capture import capture, plain_copy
from sparsify.graph.depgraph import DepGraph
from sparsify.graph.groups import ChannelGroup, class_slices, compute_groups
from sparsify.graph.analysis import analyze

STRUCTURES = ("channel", "head")
CRITERIA = ("l1", "l2", "random", "taylor")
SCOPES = ("layer", "global")


@dataclass
class GroupPlan:
    """What happens to one group: kept/total units and channels, or why it is skipped."""

    name: str
    kind: str
    tensors: list[tuple[str, int, str, int]]
    total_units: int
    kept_units: int
    total_channels: int
    kept_channels: int
    skipped: str | None = None

    def __str__(self) -> str:
        unit = "heads" if self.kind == "head" else "channels"
        head = f"{self.name}: "
        if self.skipped:
            return head + f"skipped ({self.skipped})"
        if self.kind != "head" and self.total_channels != self.total_units:
            unit = "units"
        s = f"{self.kept_units}/{self.total_units} {unit} kept"
        if unit != "channels":
            s += f" ({self.kept_channels}/{self.total_channels} channels)"
        dims = ", ".join(f"{f}[{d}]" for f, d, r, _ in self.tensors if r != "stat")
        return head + s + f"; tensors: {dims}"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "kept_units": self.kept_units,
                "total_units": self.total_units, "kept_channels": self.kept_channels,
                "total_channels": self.total_channels, "skipped": self.skipped,
                "tensors": [{"name": f, "dim": d, "role": r, "size": n} for f, d, r, n in self.tensors]}


@dataclass
class StructuredPlan:
    """Masks over whole groups plus the printable per-group plan."""

    masks: dict[str, torch.Tensor]
    groups: list[GroupPlan]
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"structured plan ({', '.join(f'{k}={v}' for k, v in self.settings.items())})"]
        lines += ["  " + str(g) for g in self.groups if not g.skipped]
        if self.skipped:
            lines.append("  skipped:")
            lines += [f"    {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "groups": [g.to_dict() for g in self.groups],
                "skipped": dict(self.skipped),
                "masks": {k: {"shape": list(m.shape), "kept": int(m.sum())} for k, m in self.masks.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _check(structure, ratio, criterion, scope, round_to, min_channels) -> None:
    if structure not in STRUCTURES:
        raise PruneError(f"structure={structure!r} should be one of {STRUCTURES}")
    if criterion not in CRITERIA:
        raise PruneError(f"criterion={criterion!r} should be one of {CRITERIA}")
    if scope not in SCOPES:
        raise PruneError(f"scope={scope!r} should be one of {SCOPES}")
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise PruneError(f"ratio={ratio!r} should be a float in [0, 1)")
    if not isinstance(round_to, int) or round_to < 1:
        raise PruneError(f"round_to={round_to!r} should be an integer >= 1")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise PruneError(f"min_channels={min_channels!r} should be an integer >= 1")


def _param_scores(dg: DepGraph, model: nn.Module, criterion: str, calib_batches,
                  loss_fn) -> Callable[[str], torch.Tensor]:
    """The elementwise score of a parameter named in the graph, computed when asked for, so
    that only one tensor's scores are held at a time (l1, l2, random)."""
    if criterion in ("l1", "random"):  # random: replaced per unit in _select
        return lambda fqn: dg.tensor(fqn).detach().float().abs()
    if criterion == "l2":
        return lambda fqn: dg.tensor(fqn).detach().float().square()
    if calib_batches is None:
        raise PruneError("criterion='taylor' needs calib_batches: an iterable of (inputs, targets)")
    names = {u.fqn for u in dg.uses.values()}
    loss_fn = loss_fn or nn.functional.cross_entropy
    m = plain_copy(model)
    params = dict(m.named_parameters())
    acc = {f: torch.zeros(dg.tensor(f).shape) for f in names}
    seen = 0
    for batch in calib_batches:
        x, y = batch
        x = x if isinstance(x, tuple) else (x,)
        m.zero_grad(set_to_none=True)
        loss = loss_fn(m(*x), y)
        loss.backward()
        for f in acc:
            p = params.get(f)
            if p is not None and p.grad is not None:
                acc[f] += (p.detach() * p.grad).abs()
        seen += 1
    if not seen:
        raise PruneError("criterion='taylor': calib_batches is empty")
    return acc.__getitem__


def _class_importance(dg: DepGraph, slices, score: Callable[[str], torch.Tensor]) -> np.ndarray:
    """Score of every channel class: the sum over all its tensor slices (BN buffers excluded)."""
    per_class = np.zeros(dg.num_vars(), dtype=np.float64)
    dims_of: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (fqn, dim), roots in slices.items():
        if dg.uses[(fqn, dim)].role != "stat":
            dims_of.setdefault(fqn, []).append((dim, roots))
    for fqn, dims in dims_of.items():
        s = score(fqn)
        if s.dim() == 0:
            continue
        for dim, roots in dims:
            red = s.transpose(0, dim).reshape(s.shape[dim], -1).sum(1).double().numpy() if s.dim() > 1 else \
                s.double().numpy()
            ok = roots >= 0
            np.add.at(per_class, roots[ok], red[ok])
    return per_class


def _select(groups_imp: list[tuple[ChannelGroup, np.ndarray]], ratio: float, scope: str, round_to: int,
            min_channels: int, rng: np.random.Generator, random: bool) -> dict[int, np.ndarray]:
    """index of group -> array of pruned unit indices."""
    def min_units(g: ChannelGroup) -> int:
        size = max(1, len(g.classes) // max(1, len(g.units)))
        return max(1, -(-min_channels // size))

    def rounded_keep(n: int, keep: int, lo: int) -> int:
        keep = max(lo, keep)
        if round_to > 1:
            keep = min(n, -(-keep // round_to) * round_to)
        return keep

    out = {}
    if scope == "layer":
        for g, imp in groups_imp:
            n = len(g.units)
            keep = rounded_keep(n, n - int(np.floor(ratio * n + 1e-9)), min_units(g))
            order = rng.permutation(n) if random else np.argsort(imp, kind="stable")
            out[g.index] = np.sort(order[:n - keep])
        return out
    entries = []
    for g, imp in groups_imp:
        norm = imp / (imp.mean() + 1e-12)
        if random:
            norm = rng.random(len(imp))
        entries += [(norm[i], g.index, i) for i in range(len(imp))]
    total = len(entries)
    n_prune = int(np.floor(ratio * total + 1e-9))
    entries.sort()
    by_index = {g.index: g for g, _ in groups_imp}
    pruned: dict[int, list[int]] = {g.index: [] for g, _ in groups_imp}
    count = 0
    for _, gi, ui in entries:
        if count >= n_prune:
            break
        g = by_index[gi]
        if len(g.units) - len(pruned[gi]) - 1 < min_units(g):
            continue
        pruned[gi].append(ui)
        count += 1
    for gi, lst in pruned.items():
        g = by_index[gi]
        n = len(g.units)
        keep = rounded_keep(n, n - len(lst), min_units(g))
        out[gi] = np.sort(np.array(lst[:n - keep], dtype=np.int64))
    return out


def _real(dg: DepGraph, classes: list[int]) -> int:
    """Number of classes that are channels (not virtual attention-head variables)."""
    return sum(1 for c in classes if not dg.var_owner[c].startswith("<"))


def _matches(pattern: str | None, names: list[str]) -> bool:
    return pattern is not None and any(re.search(pattern, n) for n in names)


def plan_structured(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, structure: str = "channel",
                    ratio: float, criterion: str = "l1", scope: str = "layer", round_to: int = 1,
                    min_channels: int = 1, targets: str | None = None, ignore: str | None = None,
                    calib_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                    loss_fn: Callable | None = None, seed: int = 0,
                    dynamic: Sequence[Sequence[int]] | None = None) -> StructuredPlan:
    """Plan channel or head pruning at `ratio` (fraction of units pruned per group, or overall
    when scope='global'). `targets`/`ignore` are regexes searched in the producer parameter
    names of a group. `dynamic` lists each input's axes that may change size (default: the
    batch). Returns the plan; the model is not modified."""
    _check(structure, ratio, criterion, scope, round_to, min_channels)
    for pat, what in ((targets, "targets"), (ignore, "ignore")):
        if pat is not None:
            try:
                re.compile(pat)
            except re.error as e:
                raise PruneError(f"{what}={pat!r} is not a valid regular expression: {e}") from e
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    cap = capture(model, example_inputs, dynamic)
    with in_step("planning", f"the dependency graph of {type(model).__name__}",
                 "re-run with 'sparsify --debug' for the traceback and report it"):
        dg = analyze(cap.gm)
        groups = compute_groups(dg)
    if targets is not None:
        names = [n for n, _ in cap.gm.named_parameters()]
        if not any(re.search(targets, n) for n in names):
            raise PruneError(f"targets={targets!r} matches no parameter of the model "
                             f"(e.g. {', '.join(names[:4])})")
    plans: list[GroupPlan] = []
    skipped: dict[str, str] = {}
    eligible: list[ChannelGroup] = []
    for g in groups:
        reason = None
        if not g.producers:
            continue
        if g.blocked:
            reason = g.blocked[0] + (f" (+{len(g.blocked) - 1} more reasons)" if len(g.blocked) > 1 else "")
        elif structure == "channel" and g.kind == "head":
            reason = "attention heads: prune them with structure='head'"
        elif structure == "head" and g.kind != "head":
            reason = "not attention heads (structure='head' prunes heads only)"
        elif targets is not None and not _matches(targets, g.producers):
            reason = f"not matched by targets={targets!r}"
        elif _matches(ignore, g.producers):
            reason = f"matched by ignore={ignore!r}"
        elif len(g.units) < 2:
            reason = "has a single unit"
        if reason:
            skipped[g.name] = reason
            n_real = _real(dg, g.classes.tolist())
            plans.append(GroupPlan(g.name, g.kind, g.tensors, len(g.units), len(g.units), n_real, n_real, reason))
        else:
            eligible.append(g)
    if targets is not None and not any(_matches(targets, g.producers) for g in groups):
        names = sorted({p for g in groups for p in g.producers})
        raise PruneError(f"targets={targets!r} matches no layer that produces channels "
                         f"(producers: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")
    slices = class_slices(dg)
    per_class = _class_importance(dg, slices, _param_scores(dg, model, criterion, calib_batches, loss_fn)) \
        if eligible else None
    imps = [(g, np.array([per_class[u].sum() for u in g.units])) for g in eligible]
    rng = np.random.default_rng(seed)
    chosen = _select(imps, float(ratio), scope, round_to, min_channels, rng, criterion == "random")
    pruned_classes: set[int] = set()
    for g in eligible:
        sel = chosen[g.index]
        cls = [c for i in sel.tolist() for c in g.units[i].tolist()]
        pruned_classes.update(cls)
        n_real = _real(dg, g.classes.tolist())
        plans.append(GroupPlan(g.name, g.kind, g.tensors, len(g.units), len(g.units) - len(sel),
                               n_real, n_real - _real(dg, cls)))
    masks = build_masks(dg, slices, pruned_classes)
    settings = {"structure": structure, "ratio": ratio, "criterion": criterion, "scope": scope,
                "round_to": round_to, "min_channels": min_channels}
    if targets is not None:
        settings["targets"] = targets
    if ignore is not None:
        settings["ignore"] = ignore
    return StructuredPlan(masks, plans, skipped, settings)


def build_masks(dg: DepGraph, slices, pruned: set[int]) -> dict[str, torch.Tensor]:
    """Bool masks (False = pruned) over every non-buffer tensor dim of the pruned classes."""
    masks: dict[str, torch.Tensor] = {}
    if not pruned:
        return masks
    pr = np.zeros(dg.num_vars() + 1, dtype=bool)
    pr[list(pruned)] = True
    for (fqn, dim), roots in slices.items():
        if dg.uses[(fqn, dim)].role == "stat":
            continue
        hit = pr[roots]
        hit[roots < 0] = False
        if not hit.any():
            continue
        t = dg.tensor(fqn)
        m = masks.get(fqn)
        if m is None:
            m = torch.ones(t.shape, dtype=torch.bool)
        shape = [1] * t.dim()
        shape[dim] = t.shape[dim]
        keep = torch.from_numpy(~hit).reshape(shape)
        masks[fqn] = m & keep
    return masks


def merge_masks(*mask_dicts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Elementwise AND of several mask dicts (e.g. a head plan and an FFN channel plan)."""
    out: dict[str, torch.Tensor] = {}
    for md in mask_dicts:
        for k, m in md.items():
            out[k] = out[k] & m if k in out else m.clone()
    return out
