"""Importance scores for unstructured pruning: higher score = more important = kept."""

from __future__ import annotations

from typing import Callable

import torch

from sparsify.errors import PruneError

Scorer = Callable[[str, torch.Tensor, torch.Generator], torch.Tensor]


def magnitude(name: str, weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """|w|: the classic magnitude criterion."""
    return weight.detach().abs().float()


def random(name: str, weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Seeded uniform scores: a baseline that ignores the weights."""
    return torch.rand(weight.shape, generator=gen)


CRITERIA: dict[str, Scorer] = {"magnitude": magnitude, "random": random}


def get_criterion(name: str) -> Scorer:
    """The scorer called ``name``."""
    if name not in CRITERIA:
        raise PruneError(f"unknown pruning method {name!r}; expected one of {', '.join(CRITERIA)}")
    return CRITERIA[name]
