"""Small masked torch models exported densely, shared by the sparse export and runtime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsify.export.onnx_export import export_onnx


def prune_(layer: nn.Module, density: float, seed: int) -> nn.Module:
    """Zero all but ``density`` of ``layer.weight`` (random unstructured mask), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = torch.rand(layer.weight.shape, generator=g) < density
        layer.weight.mul_(keep)
    return layer


def block_prune_(layer: nn.Module, block: tuple[int, int], density: float, seed: int) -> nn.Module:
    """Zero all but about ``density`` of the R x C blocks of ``layer.weight`` (random), in place."""
    r, c = block
    rows, cols = layer.weight.shape
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = torch.rand(rows // r, cols // c, generator=g) < density
        layer.weight.mul_(keep.repeat_interleave(r, 0).repeat_interleave(c, 1))
    return layer


class MLP(nn.Module):
    """Linear-ReLU, Linear-ReLU, Linear with chosen densities (the second may be fully pruned)."""

    def __init__(self, densities=(0.1, 0.2, 1.0), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2, self.head = nn.Linear(32, 64), nn.Linear(64, 48), nn.Linear(48, 10)
        for i, (layer, d) in enumerate(zip((self.fc1, self.fc2, self.head), densities)):
            prune_(layer, d, seed + i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class GeluMLP(nn.Module):
    """3-D input (batch, tokens, features): MatMul + Add bias, exact GELU, MatMul without bias."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(16, 40), nn.Linear(40, 8, bias=False)
        prune_(self.fc1, 0.2, seed)
        prune_(self.fc2, 0.2, seed + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class BlockMLP(nn.Module):
    """fc1 pruned in 4x1 blocks (ReLU), fc2 in 16x1 blocks (exact GELU), fc3 in 1x4 blocks, a dense head."""

    def __init__(self, density: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 48), nn.Linear(48, 32)
        self.head = nn.Linear(32, 10)
        for i, (layer, block) in enumerate(zip((self.fc1, self.fc2, self.fc3), ((4, 1), (16, 1), (1, 4)))):
            block_prune_(layer, block, density, seed + i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.gelu(self.fc2(torch.relu(self.fc1(x))))
        return self.head(self.fc3(y))


class CNN(nn.Module):
    """3x3 conv-ReLU, 1x1 conv-ReLU, residual 3x3 conv + add + ReLU, strided conv, mean, Linear."""

    def __init__(self, density: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.c4 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.head = nn.Linear(24, 10)
        for i, layer in enumerate((self.c1, self.c2, self.c3, self.c4, self.head)):
            prune_(layer, density, seed + i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        y = torch.relu(y + self.c3(y))
        y = torch.relu(self.c4(y))
        return self.head(y.mean(dim=(2, 3)))


EXAMPLES = {"mlp": (32,), "gelu": (4, 16), "cnn": (3, 10, 10), "block": (32,)}


def build(kind: str, **kwargs) -> nn.Module:
    """A fresh model of ``kind`` in eval mode."""
    return {"mlp": MLP, "gelu": GeluMLP, "cnn": CNN, "block": BlockMLP}[kind](**kwargs).eval()


def export(kind: str, path: Path, **kwargs) -> tuple[nn.Module, Path]:
    """Build ``kind`` and export it densely (dynamic batch) to ``path``."""
    model = build(kind, **kwargs)
    export_onnx(model, (torch.randn(1, *EXAMPLES[kind]),), path, ["x"], ["y"])
    return model, path


def inputs(kind: str, batch: int, seed: int = 0) -> np.ndarray:
    """Seeded unit-scale float32 inputs for ``kind`` at ``batch``."""
    return np.random.default_rng(seed).standard_normal((batch, *EXAMPLES[kind])).astype(np.float32)
