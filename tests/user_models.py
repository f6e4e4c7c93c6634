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


class ConvNet(nn.Module):
    """A small CNN for 3x32x32 inputs (the README's 'Your own model' example)."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def make_net(width: int = 32, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return ConvNet(width, classes)
