"""Data-aware masks for one weight matrix from its input statistics: Wanda and SparseGPT.

Both take a 2-D weight ``W`` (rows = outputs, columns = inputs in the order the layer reads
them) and ``H = Σ xᵀx`` over the calibration inputs ``x`` of that layer (columns × columns).

- Wanda (Sun et al. 2023): score ``|W_ij| · ‖X_j‖₂``, compared within each output row.
- SparseGPT (Frantar & Alistarh 2023): columns are visited left to right in blocks; each
  block picks its mask by ``w² / [H⁻¹]_jj²`` and the error of every pruned weight is pushed
  onto the not-yet-visited columns through the Cholesky factor of the dampened ``H⁻¹``
  (optimal brain surgeon updates), so the kept weights absorb what the pruned ones did.

``pruned`` (an optional bool tensor, True = already pruned) is kept pruned. Masks are bool,
True = kept. Sparsity is reached exactly per matrix (unstructured) or per group of M (N:M).
"""

from __future__ import annotations

import torch

from sparsify.errors import PruneError


def _exact_row_counts(rows: int, cols: int, sparsity: float) -> torch.Tensor:
    """Pruned weights per row summing to round(sparsity · rows · cols), spread as evenly as possible."""
    total = int(round(sparsity * rows * cols))
    base, extra = divmod(total, rows)
    counts = torch.full((rows,), base, dtype=torch.long)
    counts[:extra] += 1
    return counts


def _prune_lowest_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep-mask pruning the ``counts[r]`` lowest scores of each row (ties by position)."""
    order = torch.argsort(scores, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return ranks >= counts.unsqueeze(1)


def _prune_lowest_per_group(scores: torch.Tensor, n_keep: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the ``n_keep`` highest scores of every M consecutive columns."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=2, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order[..., :n_keep], True)
    return keep.reshape(rows, cols)


def wanda_mask(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float | None = None,
               nm: tuple[int, int] | None = None, pruned: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask by ``|W|·‖X_j‖`` per output row (unstructured) or per group of M (N:M)."""
    norms = torch.sqrt(torch.clamp(torch.diagonal(hessian), min=0)).to(torch.float64)
    scores = weight.detach().abs().to(torch.float64) * norms.unsqueeze(0)
    if pruned is not None:
        scores = torch.where(pruned, torch.full_like(scores, -1.0), scores)
    if nm is not None:
        keep = _prune_lowest_per_group(scores, nm[0], nm[1])
    else:
        assert sparsity is not None
        keep = _prune_lowest_per_row(scores, _exact_row_counts(*scores.shape, sparsity))
    return keep if pruned is None else keep & ~pruned


def _inverse_cholesky(hessian: torch.Tensor, dampening: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = dampening · mean(diag H), raising λ if H is singular."""
    h = hessian.clone()
    damp = dampening * float(torch.diagonal(h).mean())
    if damp <= 0:
        damp = dampening
    for _ in range(6):
        try:
            chol = torch.linalg.cholesky(h + damp * torch.eye(h.shape[0], dtype=h.dtype))
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True)
        except torch.linalg.LinAlgError:
            damp *= 10
    raise PruneError(f"sparsegpt: the calibration Hessian of {name} is not positive definite even with "
                     f"dampening {damp:g}; give more --calibration-batches or a larger --dampening")


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float | None = None,
              nm: tuple[int, int] | None = None, pruned: torch.Tensor | None = None,
              block_size: int = 128, dampening: float = 0.01,
              name: str = "weight") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(reconstructed weight, keep-mask, relative output error on the calibration data).

    The error is ``Σ (ΔW H ΔWᵀ) / Σ (W H Wᵀ)`` over rows: the squared change of the layer's
    outputs on the calibration inputs relative to their squared size.
    """
    w0 = weight.detach().to(torch.float64)
    rows, cols = w0.shape
    h = hessian.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w = w0.clone()
    w[:, dead] = 0.0  # an input that is always zero carries nothing: its weights go first
    hinv = _inverse_cholesky(h, dampening, name)
    prune = torch.zeros(rows, cols, dtype=torch.bool)  # True = pruned
    forced = pruned if pruned is not None else torch.zeros(rows, cols, dtype=torch.bool)
    if nm is not None:
        block_size = nm[1] * max(1, block_size // nm[1])
    target_total = 0 if sparsity is None else int(round(sparsity * rows * cols))
    done = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diagonal(hinv1)
        p1 = torch.zeros(rows, i2 - i1, dtype=torch.bool)
        f1 = forced[:, i1:i2]
        if nm is None:
            score = w1 ** 2 / d.unsqueeze(0) ** 2
            score = torch.where(f1, torch.full_like(score, -1.0), score)
            count = int(round(target_total * i2 / cols)) - done  # exact total over the blocks
            count = max(count, int(f1.sum()))
            if count > 0:
                flat = torch.argsort(score.reshape(-1), stable=True)[:count]
                p1.view(-1)[flat] = True
                done += count
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                seg = w1[:, i:i + nm[1]] ** 2 / d[i:i + nm[1]].unsqueeze(0) ** 2
                seg = torch.where(f1[:, i:i + nm[1]], torch.full_like(seg, -1.0), seg)
                low = torch.argsort(seg, dim=1, stable=True)[:, :nm[1] - nm[0]]
                p1[:, i:i + nm[1]].scatter_(1, low, True)
                p1[:, i:i + nm[1]] |= f1[:, i:i + nm[1]]
            col = w1[:, i]
            q = torch.where(p1[:, i], torch.zeros_like(col), col)
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        prune[:, i1:i2] = p1
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    keep = ~prune
    w = w * keep
    h0 = hessian.to(torch.float64)
    delta = w - w0
    num = float(torch.einsum("ij,jk,ik->", delta, h0, delta))
    den = float(torch.einsum("ij,jk,ik->", w0, h0, w0))
    return w.to(weight.dtype), keep, num / den if den > 0 else 0.0
