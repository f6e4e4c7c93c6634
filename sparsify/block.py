"""Block pruning: masks whose zeros come in whole R x C blocks of each weight's 2-D view.

A weight's 2-D view is the one the sparse kernels use: (out, in) for a Linear, torch's
``conv.weight.reshape(out, -1)`` for a conv. A block is R consecutive output rows by C
consecutive columns there: ``4x1`` blocks share one input column across four outputs (the
kernels load each input once for four products), ``1x4`` blocks are four adjacent inputs of
one output. A block's score is the mean of its weights' scores (|w| for magnitude, a random
draw for random), so blocks cut short at the edges compete fairly; the lowest-scoring blocks
are pruned until the tensor (``layer`` scope) or all targets together (``global``) reach the
sparsity. Weights an earlier mask pruned score -1 and stay pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsify.criteria import get_criterion
from sparsify.errors import PruneError
from sparsify.masks import Masks, get_masks
from sparsify.pruner import UnstructuredPlan, check_sparsity, parse_block, select_targets

def _block_means(scores: torch.Tensor, r: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean score, element count) per block of a 2-D score matrix; edge blocks may be smaller."""
    rows, cols = scores.shape
    br, bc = -(-rows // r), -(-cols // c)
    padded = torch.zeros(br * r, bc * c, dtype=torch.float64)
    present = torch.zeros(br * r, bc * c, dtype=torch.float64)
    padded[:rows, :cols] = scores.to(torch.float64)
    present[:rows, :cols] = 1.0
    total = padded.reshape(br, r, bc, c).sum(dim=(1, 3))
    count = present.reshape(br, r, bc, c).sum(dim=(1, 3))
    return total / count, count


def _expand(keep: torch.Tensor, r: int, c: int, rows: int, cols: int) -> torch.Tensor:
    """The element mask of a block mask (br, bc), cut to (rows, cols)."""
    return keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)[:rows, :cols]


def _prune_lowest(means: torch.Tensor, counts: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep mask over blocks pruning the lowest-mean blocks until ``n_prune`` elements are gone
    (ties broken by position; the last block pruned may overshoot by less than one block)."""
    order = torch.argsort(means, stable=True)
    pruned_before = torch.cumsum(counts[order], 0) - counts[order]
    keep = torch.ones(means.numel(), dtype=torch.bool)
    keep[order[pruned_before < n_prune]] = False
    return keep


def plan_block(model: nn.Module, sparsity: float, block: str, *, scope: str = "layer", method: str = "magnitude",
               targets: str | None = None, ignore: str | None = None, seed: int = 0):
    """Plan block masks pruning ``sparsity`` of the selected weights in whole blocks (an
    ``UnstructuredPlan`` whose pattern says ``block RxC``)."""
    sparsity = check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise PruneError(f"scope {scope!r} should be 'layer' or 'global'")
    r, c = parse_block(block)
    scorer = get_criterion(method)
    chosen = select_targets(model, targets, ignore)
    existing = get_masks(model)
    gen = torch.Generator().manual_seed(seed)
    blocks: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]] = {}
    for name, tensor in chosen.items():
        with torch.no_grad():
            s = scorer(name, tensor, gen).detach()
            if name in existing:
                s = torch.where(existing[name], s, torch.full_like(s, -1.0))
            means, counts = _block_means(s.reshape(s.shape[0], -1), r, c)
        blocks[name] = (means, counts, tuple(tensor.shape))
    masks: Masks = {}

    def mask_of(name: str, keep: torch.Tensor) -> torch.Tensor:
        means, _, shape = blocks[name]
        rows = shape[0]
        cols = 1
        for d in shape[1:]:
            cols *= d
        return _expand(keep.reshape(means.shape), r, c, rows, cols).reshape(shape).clone()

    if scope == "layer":
        for name, (means, counts, _) in blocks.items():
            n = int(round(sparsity * counts.sum().item()))
            masks[name] = mask_of(name, _prune_lowest(means.reshape(-1), counts.reshape(-1), n))
    else:
        means = torch.cat([m.reshape(-1) for m, _, _ in blocks.values()])
        counts = torch.cat([k.reshape(-1) for _, k, _ in blocks.values()])
        keep = _prune_lowest(means, counts, int(round(sparsity * counts.sum().item())))
        offset = 0
        for name, (m, _, _) in blocks.items():
            masks[name] = mask_of(name, keep[offset:offset + m.numel()])
            offset += m.numel()
    for name in masks:
        if name in existing:
            masks[name] &= existing[name]
    return UnstructuredPlan(masks=masks, sparsity=sparsity, scope=scope, method=method, pattern=f"block {r}x{c}")


__all__ = ["plan_block"]
