"""Unstructured pruning: choose target tensors, score them, and plan masks (plan first, apply second)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsify.criteria import get_criterion
from sparsify.errors import PruneError
from sparsify.masks import Masks, get_masks
from sparsify.options import Bounds, OptionError, check_fields, option

# Modules whose weight matrices are pruning targets by default.
PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


def check_sparsity(sparsity: float) -> float:
    """Validate a sparsity in [0, 1)."""
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise PruneError(f"sparsity={sparsity!r} should be a float in [0, 1): the fraction of weights set to zero")
    return float(sparsity)


METHODS = ("magnitude", "random", "wanda", "sparsegpt")
DATA_AWARE = ("wanda", "sparsegpt")
FRACTION = Bounds(0.0, 1.0, hi_open=True)


@dataclasses.dataclass
class PruneOptions:
    """What `sparsify prune` does: the flags of the command and the fields of a recipe's prune stage."""

    sparsity: float | None = option(None, "unstructured: fraction of weights to zero, in [0, 1)", bounds=FRACTION)
    scope: str = option("layer", "compare weights within each tensor or across all of them",
                        choices=("layer", "global"))
    method: str = option("magnitude", "unstructured / N:M criterion (wanda and sparsegpt use calibration batches "
                         "from --data)", choices=METHODS)
    targets: str | None = option(None, "regex over tensor names to prune (default: Linear/Conv/attention weights)")
    ignore: str | None = option(None, "regex over tensor names to keep dense")
    nm: str | None = option(None, "semi-structured: keep N of every M consecutive weights (e.g. 2:4)", metavar="N:M")
    block: str | None = option(None, "with --sparsity: prune whole blocks of R output rows x C input columns of "
                               "each weight (e.g. 4x1, 1x4, 16x1), which the sparse kernels run faster",
                               metavar="RxC")
    structure: str | None = option(None, "structured pruning of whole channels or attention heads; 'head,channel' "
                                   "prunes both", metavar="channel|head[,...]")
    ratio: float | None = option(None, "structured: fraction of channels/heads to remove", bounds=FRACTION)
    criterion: str = option("l1", "structured importance", choices=("l1", "l2", "random", "taylor"))
    round_to: int = option(1, "structured: keep a multiple of this many channels", bounds=Bounds(1))
    min_channels: int = option(1, "structured: keep at least this many channels per group", bounds=Bounds(1))
    bn_recalibrate: int = option(0, "re-estimate BatchNorm statistics on this many training batches after pruning "
                                 "(needs --data)", bounds=Bounds(0), metavar="BATCHES")
    calibration_batches: int = option(16, "wanda/sparsegpt/taylor: training batches of 64 samples read for the "
                                      "layers' input statistics", bounds=Bounds(1), metavar="N")
    dampening: float = option(0.01, "sparsegpt: fraction of the Hessian's mean diagonal added to it",
                              bounds=Bounds(0.0, 1.0, lo_open=True))
    block_size: int = option(128, "sparsegpt: columns whose mask is chosen together", bounds=Bounds(1))
    seed: int = option(0, "seed of random criteria and of the calibration batches")

    def validate(self) -> "PruneOptions":
        """Check every field, then the combinations; returns self."""
        check_fields(self)
        if self.nm is not None:
            check_nm(self.nm)
        if self.block is not None:
            check_block(self.block, self)
        chosen = [k for k in ("sparsity", "nm", "structure") if getattr(self, k) is not None]
        if not chosen:
            raise OptionError("sparsity", "give --sparsity (unstructured), --nm N:M, or --structure channel|head "
                                          "with --ratio")
        if len(chosen) > 1 and not (chosen == ["sparsity", "structure"] and self.ratio is None):
            raise OptionError(chosen[1], f"{' and '.join(chosen)} cannot be combined: prune one pattern per step")
        if self.method in DATA_AWARE:
            if self.structure is not None:
                raise OptionError("method", f"method={self.method} prunes weights, not channels; structured pruning "
                                            "uses --criterion")
            if self.scope != "layer":
                raise OptionError("scope", f"method={self.method} compares weights within a layer; use scope=layer")
        return self


def _compile(regex: str | None, flag: str) -> re.Pattern[str] | None:
    if regex is None:
        return None
    try:
        return re.compile(regex)
    except re.error as exc:
        raise PruneError(f"{flag} {regex!r} is not a valid regular expression: {exc}") from None


def _own_tensors(module: nn.Module) -> list[str]:
    """Names of a module's own parameters, parametrized ones under their plain name."""
    names = [n for n, t in module._parameters.items() if t is not None]
    if parametrize.is_parametrized(module):
        names += list(module.parametrizations.keys())
    return names


def named_weights(model: nn.Module, modules: tuple[type, ...] | None = None) -> dict[str, torch.Tensor]:
    """Plain fully-qualified name → effective tensor for every ≥2-D parameter (of ``modules`` if given)."""
    out: dict[str, torch.Tensor] = {}
    for mname, module in model.named_modules():
        if modules is not None and not isinstance(module, modules):
            continue
        for pname in _own_tensors(module):
            tensor = getattr(module, pname)
            if tensor.dim() >= 2:
                out[f"{mname}.{pname}" if mname else pname] = tensor
    return out


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's Linear with its weight stored in x out), matched by
    name and shape so that transformers need not be imported."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, torch.Tensor) \
        and weight.dim() == 2


def candidate_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Default targets: the ≥2-D weight matrices of Linear, Conv, MultiheadAttention and
    Hugging Face Conv1D modules."""
    out = named_weights(model, PRUNABLE_MODULES)
    for mname, module in model.named_modules():
        if is_hf_conv1d(module):
            out[f"{mname}.weight" if mname else "weight"] = module.weight
    return out


def select_targets(model: nn.Module, targets: str | None = None, ignore: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors to prune: names matching ``targets`` (default: all candidates) and not ``ignore``."""
    tpat, ipat = _compile(targets, "--targets"), _compile(ignore, "--ignore")
    candidates = candidate_tensors(model)
    if tpat is not None:
        pool = named_weights(model)
        chosen = {n: t for n, t in pool.items() if tpat.search(n)}
        if not chosen:
            raise PruneError(f"--targets {targets!r} matches no prunable tensor; candidates are: "
                             + ", ".join(sorted(pool)[:20]) + (" …" if len(pool) > 20 else ""))
    else:
        chosen = candidates
    if ipat is not None:
        chosen = {n: t for n, t in chosen.items() if not ipat.search(n)}
    if not chosen:
        raise PruneError("no tensor is left to prune after --ignore " + repr(ignore))
    return chosen


@dataclasses.dataclass
class UnstructuredPlan:
    """Masks to apply and the resulting per-tensor sparsity, computed before the model changes."""

    masks: Masks
    sparsity: float
    scope: str
    method: str
    pattern: str = "unstructured"
    weights: dict[str, torch.Tensor] | None = None  # new values of the kept weights (SparseGPT)
    layers: list[dict[str, Any]] | None = None  # per-layer record of a data-aware method

    def summary(self) -> list[dict[str, Any]]:
        return [{"tensor": n, "shape": list(m.shape), "kept": int(m.sum()), "numel": m.numel(),
                 "sparsity": round(1 - int(m.sum()) / max(1, m.numel()), 4)} for n, m in self.masks.items()]

    def __str__(self) -> str:
        rows = [f"{self.pattern} {self.method} pruning, {self.scope} scope, target sparsity {self.sparsity:.2%}"]
        rows += [f"  {r['tensor']:<48} {str(tuple(r['shape'])):<20} sparsity {r['sparsity']:.2%}" for r in self.summary()]
        return "\n".join(rows)


def _keep_top(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask keeping all but the ``n_prune`` lowest scores (ties broken by position)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune > 0:  # selection, not a full sort: O(n) (a 16.7M-weight argsort took ~10 s)
        threshold = flat.kthvalue(n_prune).values
        below = flat < threshold
        ties = torch.nonzero(flat == threshold).squeeze(1)
        keep[below] = False
        keep[ties[: n_prune - int(below.sum())]] = False
    return keep.reshape(scores.shape)


def plan_unstructured(model: nn.Module, sparsity: float, *, scope: str = "layer", method: str = "magnitude",
                      targets: str | None = None, ignore: str | None = None, seed: int = 0) -> UnstructuredPlan:
    """Plan masks pruning ``sparsity`` of the selected weights by the chosen criterion.

    Already-pruned weights (an existing mask) stay pruned and count towards the target.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise PruneError(f"scope {scope!r} should be 'layer' or 'global'")
    scorer = get_criterion(method)
    chosen = select_targets(model, targets, ignore)
    existing = get_masks(model)
    gen = torch.Generator().manual_seed(seed)

    def score(name: str, tensor: torch.Tensor) -> torch.Tensor:
        s = scorer(name, tensor, gen)
        if name in existing:  # pruned weights come first, whatever their score
            s = torch.where(existing[name], s, torch.full_like(s, -1.0))
        return s

    masks: Masks = {}
    if scope == "layer":  # one tensor's scores at a time: planning costs no copy of the model
        for name, tensor in chosen.items():
            s = score(name, tensor)
            masks[name] = _keep_top(s, int(round(sparsity * s.numel())))
    else:
        scores = {name: score(name, tensor) for name, tensor in chosen.items()}
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        keep = _keep_top(flat, int(round(sparsity * flat.numel())))
        offset = 0
        for name, s in scores.items():
            masks[name] = keep[offset:offset + s.numel()].reshape(s.shape)
            offset += s.numel()
    for name in masks:
        if name in existing:
            masks[name] &= existing[name]
    return UnstructuredPlan(masks=masks, sparsity=sparsity, scope=scope, method=method)


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` → (2, 4): keep N of every M consecutive weights."""
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise PruneError(f"--nm {text!r} should look like N:M, e.g. 2:4") from None
    if not 0 < n < m:
        raise PruneError(f"--nm {text!r}: N={n} and M={m} should satisfy 0 < N < M")
    return n, m


# Largest block side: a block is meant to match a few vector lanes or output rows.
MAX_SIDE = 64


def parse_block(text: str) -> tuple[int, int]:
    """``"4x1"`` -> (4, 1): R output rows by C input columns."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if m is None:
        raise PruneError(f"--block {text!r} should look like RxC (rows x columns of the weight), e.g. 4x1 or 1x4")
    r, c = int(m.group(1)), int(m.group(2))
    if not (1 <= r <= MAX_SIDE and 1 <= c <= MAX_SIDE) or r * c == 1:
        raise PruneError(f"--block {text!r}: R={r} and C={c} should be in [1, {MAX_SIDE}] and not both 1 "
                         "(1x1 is unstructured pruning: use --sparsity alone)")
    return r, c


def check_block(text: str, opts: "PruneOptions") -> tuple[int, int]:
    """The block shape of ``--block`` and the options it combines with (OptionError naming the field)."""
    try:
        shape = parse_block(text)
    except PruneError as exc:
        raise OptionError("block", str(exc)) from None
    if opts.sparsity is None or opts.nm is not None or opts.structure is not None:
        raise OptionError("block", "--block prunes with --sparsity (e.g. --sparsity 0.9 --block 4x1); it does not "
                                   "combine with --nm or --structure")
    if opts.method not in ("magnitude", "random"):
        raise OptionError("block", f"--block scores blocks by magnitude or random; method={opts.method} is not "
                                   "available for blocks")
    return shape


def check_nm(text: str) -> tuple[int, int]:
    """`parse_nm` whose error names the ``nm`` field (for flags and recipes alike)."""
    try:
        return parse_nm(text)
    except PruneError as exc:
        raise OptionError("nm", str(exc)) from None


def plan_nm(model: nn.Module, n: int, m: int, *, method: str = "magnitude", targets: str | None = None,
            ignore: str | None = None, seed: int = 0) -> UnstructuredPlan:
    """Semi-structured N:M masks: in every group of M consecutive input weights of a row, keep the N best.

    Rows are the output channels; a tensor whose row length (in × kernel) is not a multiple of M
    is an error naming it (use --ignore to skip it).
    """
    scorer = get_criterion(method)
    chosen = select_targets(model, targets, ignore)
    existing = get_masks(model)
    gen = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    for name, tensor in chosen.items():
        row = tensor[0].numel()
        if row % m:
            raise PruneError(f"{name} has rows of {row} weights, not a multiple of M={m}; "
                             f"N:M pruning needs whole groups (skip it with --ignore)")
        s = scorer(name, tensor, gen)
        if name in existing:
            s = torch.where(existing[name], s, torch.full_like(s, -1.0))
        groups = s.reshape(-1, m)
        order = torch.argsort(groups, dim=1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order[:, :n], True)
        masks[name] = keep.reshape(tensor.shape)
        if name in existing:
            masks[name] &= existing[name]
    return UnstructuredPlan(masks=masks, sparsity=1 - n / m, scope="layer", method=method, pattern=f"{n}:{m}")
