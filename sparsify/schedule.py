"""Gradual pruning inside fine-tuning: when masks change and what they become.

The sparsity follows the cubic schedule of Zhu & Gupta (2017),
``s_k = s_f + (s_i − s_f)(1 − k/n)³`` at points ``t₀ + kΔ`` (k = 0 … n), where ``t₀`` is
``start`` and ``t₀ + nΔ`` the last point at or before ``end`` (both fractions of the
fine-tuning, counted in epochs or optimizer steps, ``Δ = every``). The same curve drives:

- unstructured: the fraction of weights pruned (magnitude or random, layer or global);
- N:M: the number of weights kept in every group of M, stepping from M down to N, so every
  intermediate mask is an (M−k):M mask and the final one is N:M;
- channels / heads: the fraction of units removed (iterative structured pruning).

Masks change only at schedule points; a pruned weight stays pruned (each new mask is ANDed
with the current one), and between points the fixed-mask guarantee of `sparsify.masks`
holds: a pruned weight is exactly 0.0 after every optimizer step.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from sparsify.masks import FixedMask, apply_masks, enforce_masks, fold_masks, get_masks, iter_masks
from sparsify.options import Bounds, OptionError, check_fields, option
from sparsify.pruner import FRACTION, check_nm, parse_nm, plan_nm, plan_unstructured, select_targets

KINDS = ("none", "gradual")
UNITS = ("epoch", "step")


@dataclasses.dataclass
class ScheduleOptions:
    """A gradual schedule: the flags of `sparsify finetune --schedule gradual` and a recipe's ``schedule``."""

    kind: str = option("none", "none: masks stay as they are; gradual: prune during fine-tuning on the cubic "
                       "schedule of Zhu & Gupta", choices=KINDS)
    final_sparsity: float | None = option(None, "gradual: sparsity reached at the last point (unstructured: "
                                          "fraction of weights; --structure: fraction of channels/heads)",
                                          bounds=FRACTION)
    initial_sparsity: float = option(0.0, "gradual: sparsity of the first point", bounds=FRACTION)
    start: float = option(0.0, "gradual: first point, as a fraction of the fine-tuning", bounds=Bounds(0.0, 1.0))
    end: float = option(0.7, "gradual: last point, as a fraction of the fine-tuning", bounds=Bounds(0.0, 1.0))
    every: int = option(1, "gradual: interval between points, in --unit", bounds=Bounds(1))
    unit: str = option("epoch", "gradual: unit of --every", choices=UNITS)
    method: str = option("magnitude", "gradual, unstructured / N:M criterion", choices=("magnitude", "random"))
    scope: str = option("layer", "gradual: compare weights within each tensor or across all",
                        choices=("layer", "global"))
    targets: str | None = option(None, "gradual: regex over tensor names (or channel producers) to prune")
    ignore: str | None = option(None, "gradual: regex over tensor names (or channel producers) to keep")
    nm: str | None = option(None, "gradual: ramp to N:M, keeping M, M-1, ..., N of every M weights", metavar="N:M")
    structure: str | None = option(None, "gradual: remove whole channels or heads in steps",
                                   choices=("channel", "head"))
    criterion: str = option("l1", "gradual, structured importance", choices=("l1", "l2"))
    round_to: int = option(1, "gradual, structured: keep a multiple of this many channels", bounds=Bounds(1))
    min_channels: int = option(1, "gradual, structured: keep at least this many channels per group",
                               bounds=Bounds(1))

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def validate(self) -> "ScheduleOptions":
        """Check every field, then the combinations; returns self."""
        check_fields(self)
        if not self.active:
            return self
        if self.end <= self.start:
            raise OptionError("end", f"the schedule ends (end={self.end:g}) before it starts (start={self.start:g}); "
                                     "end should be after start, both fractions of the fine-tuning in [0, 1]")
        if self.nm is not None:
            if self.structure is not None:
                raise OptionError("nm", "a schedule ramps either to N:M or to a channel/head ratio, not both")
            check_nm(self.nm)
            if self.final_sparsity is not None:
                raise OptionError("final_sparsity", "an N:M schedule ends at N:M; leave final_sparsity out")
        elif self.final_sparsity is None:
            raise OptionError("final_sparsity", "a gradual schedule needs final_sparsity (or nm: N:M)")
        elif self.initial_sparsity > self.final_sparsity:
            raise OptionError("initial_sparsity", f"initial_sparsity={self.initial_sparsity:g} is above "
                                                  f"final_sparsity={self.final_sparsity:g}")
        return self


@dataclasses.dataclass
class Point:
    """One schedule point: the optimizer step before which masks change, and their target."""

    step: int
    target: float  # sparsity / ratio; for N:M the fraction of the ramp M -> N done
    label: str


def cubic(k: int, n: int, initial: float, final: float) -> float:
    """Zhu & Gupta: ``final + (initial − final)(1 − k/n)³``."""
    return final + (initial - final) * (1.0 - k / n) ** 3


def schedule_points(opts: ScheduleOptions, epochs: int, steps_per_epoch: int) -> list[Point]:
    """The points of a validated gradual schedule over ``epochs`` of ``steps_per_epoch`` steps."""
    per_unit = steps_per_epoch if opts.unit == "epoch" else 1
    total = epochs * steps_per_epoch // per_unit
    t0, t1 = round(opts.start * total), round(opts.end * total)
    n = (t1 - t0) // opts.every
    if n < 1:
        raise OptionError("every", f"the schedule window ({t0} to {t1} {opts.unit}s of {total}) holds no interval "
                                   f"of every={opts.every} {opts.unit}s; widen start..end, lower every, or train longer")
    points = []
    for k in range(n + 1):
        target = cubic(k, n, opts.initial_sparsity if opts.nm is None else 0.0,
                       opts.final_sparsity if opts.nm is None else 1.0)
        points.append(Point((t0 + k * opts.every) * per_unit, target, ""))
    if opts.nm is not None:
        n_keep, m = parse_nm(opts.nm)
        for p in points:
            p.label = f"{m - round(p.target * (m - n_keep))}:{m}"
    else:
        for p in points:
            p.label = f"{p.target:.4f}"
    return points


class GradualPruner:
    """Applies a schedule's masks to a model at its points; records what each point reached."""

    def __init__(self, opts: ScheduleOptions, model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                 epochs: int, steps_per_epoch: int,
                 sync: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
        self.opts = opts
        self.example = example_inputs
        self.points = schedule_points(opts, epochs, steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.sync = sync
        self.records: list[dict[str, Any]] = []
        self._next = 0
        self._before = set(get_masks(model))
        self._prepare(model)

    @property
    def last_step(self) -> int:
        return self.points[-1].step

    def finished(self, step: int) -> bool:
        """True once the last point has been applied (its masks are the final ones)."""
        return self._next >= len(self.points) and step >= self.last_step

    def _prepare(self, model: nn.Module) -> None:
        """Attach all-ones masks to every tensor the schedule may prune, so later points only edit masks."""
        if self.opts.nm is not None:  # ragged rows are reported before any training
            names = list(plan_nm(model, *parse_nm(self.opts.nm), targets=self.opts.targets,
                                 ignore=self.opts.ignore).masks)
        elif self.opts.structure is None:
            names = list(select_targets(model, self.opts.targets, self.opts.ignore))
        else:
            plan = self._structured(model, self.opts.final_sparsity or 0.0)
            params = dict(model.named_parameters())
            plain = {n.replace(".parametrizations.", ".").removesuffix(".original") for n in params}
            names = sorted({t[0] for g in plan.groups if not g.skipped for t in g.tensors} & plain)
        existing = set(get_masks(model))
        ones = {}
        for n in names:
            if n in existing:
                continue
            module, _, tname = n.rpartition(".")
            t = getattr(model.get_submodule(module) if module else model, tname)
            ones[n] = torch.ones(t.shape, dtype=torch.bool)
        if ones:
            apply_masks(model, ones)

    def _structured(self, model: nn.Module, ratio: float):
        from sparsify.structured import plan_structured

        plain = fold_masks(copy.deepcopy(model))
        return plan_structured(plain, self.example, structure=self.opts.structure, ratio=ratio,
                               criterion=self.opts.criterion, scope=self.opts.scope, round_to=self.opts.round_to,
                               min_channels=self.opts.min_channels, targets=self.opts.targets,
                               ignore=self.opts.ignore)

    def _masks_for(self, model: nn.Module, point: Point) -> tuple[dict[str, torch.Tensor], float]:
        o = self.opts
        if o.structure is not None:
            plan = self._structured(model, point.target)
            groups = [g for g in plan.groups if not g.skipped]
            removed = sum(g.total_units - g.kept_units for g in groups) / max(1, sum(g.total_units for g in groups))
            return plan.masks, removed
        if o.nm is not None:
            keep, m = (int(v) for v in point.label.split(":"))
            if keep == m:
                return {}, 0.0
            plan = plan_nm(model, keep, m, method=o.method, targets=o.targets, ignore=o.ignore)
            return plan.masks, 1 - keep / m
        plan = plan_unstructured(model, point.target, scope=o.scope, method=o.method, targets=o.targets,
                                 ignore=o.ignore)
        return plan.masks, point.target

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Apply every point due at or before optimizer step ``step`` (call before that step)."""
        while self._next < len(self.points) and self.points[self._next].step <= step:
            point = self.points[self._next]
            self._next += 1
            masks, target = self._masks_for(model, point)
            if self.sync is not None:
                masks = self.sync(masks)
            update_masks(model, masks, optimizer)
            self.records.append({"step": step, "epoch": round(step / max(1, self.steps_per_epoch), 4),
                                 "target": point.label if self.opts.nm else round(point.target, 6),
                                 "reached": round(target, 6), "weight_sparsity": round(masked_sparsity(model), 6)})

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Drop masks the schedule attached but never used (all ones); the manifest's schedule record."""
        for fqn, module, tname, p in list(iter_masks(model)):
            if fqn not in self._before and bool(p.mask.all()):
                from torch.nn.utils import parametrize

                parametrize.remove_parametrizations(module, tname, leave_parametrized=False)
        return {**dataclasses.asdict(self.opts), "curve": "cubic (Zhu & Gupta 2017)",
                "points": self.records}


@torch.no_grad()
def update_masks(model: nn.Module, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> None:
    """AND new masks into the attached ones in place; zero pruned weights and their optimizer state.

    Editing the attached masks (rather than re-registering parametrizations) keeps the
    model's parameters, and so the optimizer's and DDP's references to them, unchanged.
    """
    attached = {fqn: (module, tname, p) for fqn, module, tname, p in iter_masks(model)}
    fresh = {}
    for name, mask in masks.items():
        if name in attached:
            p: FixedMask = attached[name][2]
            p.mask &= mask.to(p.mask.device)
        else:
            fresh[name] = mask
    if fresh:  # tensors outside the prepared set (e.g. BatchNorm buffers of a structured group)
        apply_masks(model, fresh)
    enforce_masks(model)
    if optimizer is not None:
        for fqn, (module, tname, p) in attached.items():
            original = getattr(module.parametrizations, tname).original
            for value in optimizer.state.get(original, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == original.shape:
                    value.mul_(p.mask.to(value.dtype))


def masked_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all masked tensors (weights that are exactly 0.0)."""
    zeros = total = 0
    for _, module, tname, _ in iter_masks(model):
        t = getattr(module, tname)
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / max(1, total)


def schedule_notes(recipe: list[dict[str, Any]]) -> list[str]:
    """One line per gradual schedule a run went through: its points and what each reached."""
    notes = []
    for step in recipe:
        sched = step.get("schedule")
        if not sched or not sched.get("points"):
            continue
        pts = ", ".join(f"step {p['step']}: {p['target']} ({p['weight_sparsity']:.1%} of masked weights zero)"
                        for p in sched["points"])
        what = sched.get("structure") or (f"N:M {sched['nm']}" if sched.get("nm") else "unstructured")
        notes.append(f"gradual {what} schedule ({sched.get('curve', 'cubic')}): {pts}")
    return notes
