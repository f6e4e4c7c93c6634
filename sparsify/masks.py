"""Masks as parametrizations: W' = W ⊙ M on tensors named by fully-qualified name.

Lifecycle: ``apply_masks`` (attach, zero the pruned originals) → fine-tune with
``enforce_masks_after_steps`` on the optimizer → ``fold_masks`` (squash into plain tensors).
A pruned weight is exactly 0.0 both in the effective tensor and in the stored original after
every optimizer step, whatever the optimizer's momentum, adaptive state or weight decay.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsify.errors import PruneError

Masks = dict[str, torch.Tensor]


class FixedMask(nn.Module):
    """Parametrization multiplying a tensor by a fixed {0, 1} mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, tensor_name = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise PruneError(f"mask names tensor {name!r}, but the model has no module {module_name!r}") from None
    return module, tensor_name


def _original(module: nn.Module, tensor_name: str) -> torch.Tensor:
    if parametrize.is_parametrized(module, tensor_name):
        return getattr(module.parametrizations, tensor_name).original
    return getattr(module, tensor_name)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Attach each mask to its tensor (replacing any earlier mask) and zero the pruned originals."""
    for name, mask in masks.items():
        module, tensor_name = _owner(model, name)
        target = getattr(module, tensor_name, None)
        if not isinstance(target, torch.Tensor):
            raise PruneError(f"mask names tensor {name!r}, which the model does not have")
        if tuple(mask.shape) != tuple(target.shape):
            raise PruneError(f"mask for {name!r} has shape {tuple(mask.shape)}; the tensor has shape {tuple(target.shape)}")
        if parametrize.is_parametrized(module, tensor_name):
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        if tensor_name in module._buffers:  # buffers (e.g. BatchNorm statistics) are masked in place
            with torch.no_grad():
                module._buffers[tensor_name].mul_(mask.to(target.dtype))
            continue
        parametrize.register_parametrization(module, tensor_name, FixedMask(mask.to(target.device)), unsafe=True)
    enforce_masks(model)


def iter_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, FixedMask]]:
    """(fully-qualified tensor name, owner module, tensor name, parametrization) for every mask."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, FixedMask):
                    fqn = f"{module_name}.{tensor_name}" if module_name else tensor_name
                    yield fqn, module, tensor_name, p


def get_masks(model: nn.Module) -> Masks:
    """The masks attached to the model, by fully-qualified tensor name."""
    return {fqn: p.mask.clone() for fqn, _, _, p in iter_masks(model)}


@torch.no_grad()
def enforce_masks(model: nn.Module) -> None:
    """Zero the stored originals at pruned positions (idempotent)."""
    for _, module, tensor_name, p in iter_masks(model):
        original = _original(module, tensor_name)
        original.mul_(p.mask.to(original.dtype))


def enforce_masks_after_steps(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Register a post-step hook re-zeroing pruned originals; returns the hook handle."""
    return optimizer.register_step_post_hook(lambda *_: enforce_masks(model))


def fold_masks(model: nn.Module) -> nn.Module:
    """Replace every masked tensor by W ⊙ M as a plain parameter (in place); returns the model.

    Safe on a ``copy.deepcopy`` of a masked model: the copy and the original share torch's
    generated ``Parametrized*`` class, whose properties removal deletes, so each module first
    gets a private copy of that class and the original model keeps working.
    """
    for _, module, tensor_name, _ in list(iter_masks(model)):
        cls = module.__class__
        if not getattr(cls, "_sparsify_private", False):
            module.__class__ = type(cls.__name__, cls.__bases__, {**cls.__dict__, "_sparsify_private": True})
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with masks folded in and plain (unparametrized) tensor names.

    A masked tensor is its stored original, which :func:`enforce_masks` keeps equal to
    W ⊙ M bit for bit. Tensors are not copied, except one sharing memory with an earlier
    one (tied weights), which safetensors cannot store twice.
    """
    state = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if ".parametrizations." in key or key.startswith("parametrizations."):
            prefix, _, rest = ("." + key).partition(".parametrizations.")
            tensor_name, _, kind = rest.partition(".")
            if kind != "original":
                continue
            key = f"{prefix[1:]}.{tensor_name}" if prefix else tensor_name
        value = value.detach().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            value = value.clone()
        seen.add(storage)
        state[key] = value
    return state


def sparsity_report(model: nn.Module) -> dict[str, dict[str, object]]:
    """Per masked tensor: shape, number of elements, nonzeros and sparsity of W ⊙ M."""
    report: dict[str, dict[str, object]] = {}
    for fqn, module, tensor_name, _ in iter_masks(model):
        w = getattr(module, tensor_name)
        nnz = int(torch.count_nonzero(w))
        report[fqn] = {"shape": list(w.shape), "numel": w.numel(), "nonzeros": nnz,
                       "sparsity": round(1.0 - nnz / max(1, w.numel()), 6)}
    return report
