"""Calibration statistics of a layer's inputs: ``H = Σ xᵀx`` for one weight at a time.

A weight's inputs are read as a matrix whose columns follow the weight's columns:
Linear: the last input dimension; Conv1d/Conv2d: the unfolded (im2col) patches, one Hessian
per conv group; MultiheadAttention: query / key / value for the rows of ``in_proj_weight``
that read them, and the attention output before ``out_proj`` for ``out_proj.weight``
(recomputed with an identity projection, since ``out_proj`` is not called as a module).

Only one weight's Hessians are held at a time. The forward pass stops (by an exception
raised from the hook) as soon as the weight has seen its last call of a batch, so later
layers are not run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsify.errors import DataError, PruneError

Batch = tuple[torch.Tensor, ...]


class _Stop(Exception):
    """Raised by a capture hook to end the forward pass early."""


@dataclasses.dataclass
class Target:
    """One weight a data-aware method can prune: where its inputs come from."""

    name: str  # fully-qualified tensor name, e.g. "blocks.0.attn.in_proj_weight"
    module: nn.Module  # the module whose call carries the inputs (the MHA for its weights)
    kind: str  # linear | conv | mha_in | mha_out
    shape: tuple[int, ...]

    def matrix_shape(self) -> tuple[int, int]:
        return self.shape[0], int(torch.Size(self.shape[1:]).numel())


def find_targets(model: nn.Module, names: Sequence[str]) -> dict[str, Target]:
    """The data-aware target for every tensor name; other tensors are an error naming them."""
    modules = dict(model.named_modules())
    out: dict[str, Target] = {}
    for name in names:
        mname, _, tname = name.rpartition(".")
        module = modules.get(mname)
        parent_name, _, child = mname.rpartition(".")
        parent = modules.get(parent_name)
        shape = tuple(getattr(module, tname).shape) if module is not None else ()
        if isinstance(parent, nn.MultiheadAttention) and child == "out_proj" and tname == "weight":
            out[name] = Target(name, parent, "mha_out", shape)
        elif isinstance(module, nn.MultiheadAttention) and tname in ("in_proj_weight", "q_proj_weight",
                                                                    "k_proj_weight", "v_proj_weight"):
            out[name] = Target(name, module, "mha_in", shape)
        elif isinstance(module, nn.Linear) and tname == "weight":
            out[name] = Target(name, module, "linear", shape)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)) and tname == "weight":
            out[name] = Target(name, module, "conv", shape)
        else:
            kind = type(module).__name__ if module is not None else "parameter"
            raise PruneError(f"wanda and sparsegpt prune the weights of Linear, Conv1d, Conv2d and "
                             f"MultiheadAttention layers; {name} belongs to a {kind}: leave it out with --ignore")
    return out


def _conv_columns(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Unfolded patches (N·L, groups, cols per group), columns ordered like the weight's."""
    two_d = isinstance(conv, nn.Conv2d)
    if not two_d:  # Conv1d as a 2-D conv of height 1
        x = x.unsqueeze(2)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    pad = list(conv._reversed_padding_repeated_twice)
    if not two_d:
        pad = pad + [0, 0]
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    k = conv.kernel_size if two_d else (1, conv.kernel_size[0])
    s = conv.stride if two_d else (1, conv.stride[0])
    d = conv.dilation if two_d else (1, conv.dilation[0])
    cols = F.unfold(x, k, dilation=d, stride=s)  # (N, C·kh·kw, L)
    n, c, length = cols.shape
    return cols.permute(0, 2, 1).reshape(n * length, conv.groups, c // conv.groups)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class HessianCapture:
    """Accumulates ``Σ xᵀx`` (float64) per input block of one target over forward calls."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.sums: list[torch.Tensor] | None = None
        self.samples = 0
        self._inside = False

    def _add(self, mats: list[torch.Tensor]) -> None:
        mats = [m.detach().to(torch.float64) for m in mats]
        if self.sums is None:
            self.sums = [m.T @ m for m in mats]
        else:
            for s, m in zip(self.sums, mats):
                s += m.T @ m
        self.samples += mats[0].shape[0]

    def blocks(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The input matrices of one call (one per row block / conv group)."""
        t = self.target
        if t.kind == "linear":
            return [_rows(args[0])]
        if t.kind == "conv":
            cols = _conv_columns(t.module, args[0])
            return [cols[:, g] for g in range(cols.shape[1])]
        mha: nn.MultiheadAttention = t.module  # type: ignore[assignment]
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args):]])[:3]
        tname = t.name.rpartition(".")[2]
        if t.kind == "mha_in":
            if tname == "in_proj_weight":
                if q is k and k is v:
                    return [_rows(q)]
                return [_rows(q), _rows(k), _rows(v)]
            return [_rows({"q_proj_weight": q, "k_proj_weight": k, "v_proj_weight": v}[tname])]
        params = {"out_proj.weight": torch.eye(mha.embed_dim, dtype=q.dtype)}
        if mha.out_proj.bias is not None:
            params["out_proj.bias"] = torch.zeros(mha.embed_dim, dtype=q.dtype)
        self._inside = True
        try:
            out = torch.func.functional_call(mha, params, args, kwargs)
        finally:
            self._inside = False
        return [_rows(out[0] if isinstance(out, tuple) else out)]

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._inside:
            return
        self._add(self.blocks(args, kwargs))


def execution_order(model: nn.Module, targets: dict[str, Target], batch: Batch) -> dict[str, int]:
    """Target name → number of calls per forward pass, in the order the weights are first used."""
    calls: dict[str, int] = {}
    by_module: dict[int, list[str]] = {}
    for t in targets.values():
        by_module.setdefault(id(t.module), []).append(t.name)

    def hook(module, args, kwargs):
        names = sorted(by_module[id(module)], key=lambda n: targets[n].kind != "mha_in")
        for n in names:
            calls[n] = calls.get(n, 0) + 1

    handles = [t.module.register_forward_pre_hook(hook, with_kwargs=True)
               for t in {id(t.module): t for t in targets.values()}.values()]
    try:
        run_batch(model, batch, 0)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in targets if n not in calls]
    if missing:
        raise PruneError(f"{missing[0]} is never used when the calibration data runs through the model, so "
                         "wanda/sparsegpt have no inputs for it; leave it out with --ignore")
    return calls


def run_batch(model: nn.Module, batch: Batch, index: int) -> None:
    """One forward pass; a failure is a DataError naming the batch and its input shapes."""
    try:
        model(*batch)
    except _Stop:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shapes = ", ".join(str(tuple(x.shape)) for x in batch)
        raise DataError(f"calibration batch {index} (inputs {shapes}) could not run through the model: "
                        f"{str(exc).splitlines()[0]}; the --data inputs should have the shape the model takes") from None


def capture_hessian(model: nn.Module, target: Target, calls_per_forward: int,
                    batches: Sequence[Batch]) -> tuple[list[torch.Tensor], int]:
    """(Σ xᵀx per input block, number of input rows) of one target over the calibration batches."""
    cap = HessianCapture(target)
    seen = [0]

    def hook(module, args, kwargs):
        if cap._inside:
            return
        cap.hook(module, args, kwargs)
        seen[0] += 1
        if seen[0] == calls_per_forward:
            raise _Stop

    handle = target.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                seen[0] = 0
                try:
                    run_batch(model, batch, i)
                except _Stop:
                    pass
    finally:
        handle.remove()
    assert cap.sums is not None
    return cap.sums, cap.samples


def check_batches(batches: Sequence[Batch], expected: Sequence[tuple[int, ...]] | None) -> None:
    """Each calibration batch matches the model's recorded input shapes (batch dimension free)."""
    if not batches:
        raise DataError("no calibration batches: the data set is empty or --calibration-batches is 0")
    if expected is None:
        return
    for i, batch in enumerate(batches):
        got = [tuple(x.shape[1:]) for x in batch]
        want = [tuple(s[1:]) for s in expected]
        if got != want:
            raise DataError(f"calibration batch {i} has inputs of shape {[tuple(x.shape) for x in batch]}; the model "
                            f"takes {[('N',) + w for w in want]} (its recorded inputs): give --data matching the model")


Progress = Callable[[str], None]
