"""Data-aware one-shot pruning (Wanda, SparseGPT), layer by layer in the order the model uses them.

Each weight is pruned from the inputs it receives from the already-pruned layers before it
(sequential calibration, as both papers do): for every target, the calibration batches run
through a plain copy of the model up to that layer, its Hessian is accumulated, its mask
(and for SparseGPT its reconstructed weights) computed and written into the copy, and the
Hessian freed. The model itself is not changed; the plan carries masks and new weights.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsify.calibration import Batch, capture_hessian, execution_order, find_targets
from sparsify.errors import PruneError
from sparsify.masks import fold_masks, get_masks
from sparsify.pruner import UnstructuredPlan, select_targets
from sparsify.reconstruct import sparsegpt, wanda_mask

DATA_AWARE = ("wanda", "sparsegpt")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mname, _, tname = name.rpartition(".")
    return (model.get_submodule(mname) if mname else model), tname


@torch.no_grad()
def write_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy new values into the model's stored tensors (the originals of masked ones)."""
    for name, value in weights.items():
        module, tname = _owner(model, name)
        if parametrize.is_parametrized(module, tname):
            getattr(module.parametrizations, tname).original.copy_(value)
        else:
            getattr(module, tname).copy_(value)


def _row_blocks(kind: str, rows: int, blocks: int) -> list[slice]:
    """Row slices of the weight that read each input block (MHA q/k/v rows; conv groups)."""
    if blocks == 1:
        return [slice(0, rows)]
    step = rows // blocks
    return [slice(i * step, (i + 1) * step) for i in range(blocks)]


def plan_data_aware(model: nn.Module, method: str, batches: Sequence[Batch], *, sparsity: float | None = None,
                    nm: tuple[int, int] | None = None, targets: str | None = None, ignore: str | None = None,
                    dampening: float = 0.01, block_size: int = 128,
                    progress: Callable[[str], None] | None = None) -> UnstructuredPlan:
    """Masks (and SparseGPT's reconstructed weights) for the selected weights of ``model``."""
    if method not in DATA_AWARE:
        raise PruneError(f"method {method!r} is not data-aware; expected one of {', '.join(DATA_AWARE)}")
    if (sparsity is None) == (nm is None):
        raise PruneError(f"{method} needs either a sparsity or an N:M pattern")
    existing = get_masks(model)
    names = list(select_targets(model, targets, ignore))
    plain = fold_masks(copy.deepcopy(model)).eval()
    found = find_targets(plain, names)
    if nm is not None:
        for t in found.values():
            cols = t.matrix_shape()[1]  # a conv's row holds one group's columns
            if cols % nm[1]:
                raise PruneError(f"{t.name} has rows of {cols} weights, not a multiple of M={nm[1]}; "
                                 f"N:M pruning needs whole groups (skip it with --ignore)")
    calls = execution_order(plain, found, batches[0])
    masks: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    layers: list[dict] = []
    for i, name in enumerate(calls):
        t0 = time.perf_counter()
        t = found[name]
        sums, samples = capture_hessian(plain, t, calls[name], batches)
        module, tname = _owner(plain, name)
        w = getattr(module, tname).detach()
        rows, cols = t.matrix_shape()
        w2 = w.reshape(rows, cols)
        before = existing.get(name)
        pruned = None if before is None else ~before.reshape(rows, cols)
        new_w, keep = w2.clone(), torch.ones(rows, cols, dtype=torch.bool)
        errors = []
        for rs, h in zip(_row_blocks(t.kind, rows, len(sums)), sums):
            p = None if pruned is None else pruned[rs]
            if method == "wanda":
                keep[rs] = wanda_mask(w2[rs], h, sparsity=sparsity, nm=nm, pruned=p)
                new_w[rs] = w2[rs] * keep[rs]
            else:
                new_w[rs], keep[rs], err = sparsegpt(w2[rs], h, sparsity=sparsity, nm=nm, pruned=p,
                                                     block_size=block_size, dampening=dampening, name=name)
                errors.append(err)
        if pruned is not None:
            keep &= ~pruned
            new_w = new_w * keep
        with torch.no_grad():
            getattr(module, tname).copy_(new_w.reshape(w.shape))
        masks[name] = keep.reshape(w.shape)
        weights[name] = new_w.reshape(w.shape).clone()
        del sums
        record = {"tensor": name, "samples": samples, "sparsity": round(1 - float(keep.float().mean()), 6),
                  "seconds": round(time.perf_counter() - t0, 3)}
        if errors:
            record["relative_error"] = round(max(errors), 6)
        layers.append(record)
        if progress:
            extra = f", relative output error {record['relative_error']:.4f}" if errors else ""
            progress(f"{method} [{i + 1}/{len(calls)}] {name} {tuple(w.shape)}: sparsity "
                     f"{record['sparsity']:.2%} from {samples} input rows in {record['seconds']:.2f} s{extra}")
    return UnstructuredPlan(masks=masks, sparsity=sparsity if sparsity is not None else 1 - nm[0] / nm[1],
                            scope="layer", method=method, pattern="unstructured" if nm is None else f"{nm[0]}:{nm[1]}",
                            weights=weights, layers=layers)
