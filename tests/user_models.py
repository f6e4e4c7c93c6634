"""Tiny user-side models and data used by the tests as 'package.module:attr' references."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class TinyNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, width)
        self.fc2 = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_tiny(width: int = 16, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(width, classes)


INSTANCE = TinyNet()
NOT_A_MODEL = 42


def not_a_module_factory():
    return "a string"


def tiny_dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return TensorDataset(x, y)


class _DiesOnRankOne(torch.utils.data.Dataset):
    """tiny_dataset, except that reading it on distributed rank 1 kills that process (a crashed rank)."""

    def __init__(self):
        self.inner = tiny_dataset()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        import os

        if os.environ.get("RANK") == "1":
            os._exit(9)
        return self.inner[i]


def dying_dataset():
    return _DiesOnRankOne()
