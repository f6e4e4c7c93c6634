"""Refuse a model larger than the memory limit before it is allocated: it is built once on the
meta device, where parameters take no memory, and its bytes are counted."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from sparsify.errors import ModelError, SparsifyError
from sparsify.limits import check_bytes


def check_model_size(build: Callable[[], Any], name: str) -> None:
    """Build on the meta device (no memory) and refuse a module beyond the memory limit.

    A factory that cannot build on the meta device is left to its real build.
    """
    try:
        with torch.device("meta"):
            probe = build()
    except SparsifyError:
        raise
    except Exception:
        return
    if isinstance(probe, nn.Module):
        tensors = [*probe.parameters(), *probe.buffers()]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        check_bytes(nbytes, f"model {name!r} ({sum(t.numel() for t in tensors):,} parameters and buffers)", ModelError)
