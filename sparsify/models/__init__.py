"""Built-in model zoo: names → factories, all for the bundled digits data (input N×1×8×8)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sparsify.errors import ModelError
from sparsify.models.digits import DigitsCNN, DigitsMLP, DigitsViT

BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "digits-mlp": DigitsMLP,
    "digits-cnn": DigitsCNN,
    "digits-vit": DigitsViT,
}

# Every built-in model takes one float32 image batch of this shape (batch first).
BUILTIN_INPUT_SHAPE = (1, 1, 8, 8)


def build_builtin(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """Build a built-in model with seeded initial weights."""
    if name not in BUILTIN_MODELS:
        raise ModelError(
            f"unknown built-in model {name!r}; expected one of {', '.join(sorted(BUILTIN_MODELS))}, "
            "or an import reference 'package.module:attr'"
        )
    torch.manual_seed(seed)
    try:
        return BUILTIN_MODELS[name](**kwargs)
    except TypeError as exc:
        raise ModelError(f"built-in model {name!r} does not accept arguments {kwargs}: {exc}") from exc
    except (ValueError, RuntimeError) as exc:  # e.g. a negative size
        raise ModelError(f"built-in model {name!r} cannot be built with arguments {kwargs}: {exc}") from exc
