"""Benchmark testbeds for structured pruning: a ResNet-style CNN and a BERT-style encoder.

Seeded random weights (no download); BatchNorm/LayerNorm get non-trivial statistics so
that exactness checks exercise the running mean/var and affine parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the identity (or a 1x1 conv-BN projection), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetStyle(nn.Module):
    """ResNet-18 layout by default: stem, 4 stages of 2 basic blocks (8 blocks), pool, fc."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (64, 128, 256, 512),
                 num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(c, w, stride=2 if (j == 0 and i > 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    """Self-attention with separate q/k/v Linears reshaped into heads."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        d = c // self.heads
        q = self.query(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.key(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.value(x).view(b, t, self.heads, d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class EncoderLayer(nn.Module):
    """Post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + fc2(gelu(fc1(x))))."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.attention = Attention(dim, heads)
        self.ln1 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class BertStyle(nn.Module):
    """Token + learned position embeddings, LayerNorm, encoder layers, a classifier on token 0."""

    def __init__(self, vocab: int = 8000, dim: int = 256, heads: int = 8, ffn: int = 1024, layers: int = 4,
                 max_len: int = 128, num_classes: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn) for _ in range(layers))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.tok(ids) + self.pos[:, : ids.shape[1]])
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x[:, 0])


def _randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_((torch.rand(m.num_features, generator=g) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
    return model.eval()


def resnet_style(seed: int = 0, **kwargs) -> ResNetStyle:
    """ResNet-18-style CNN (8 residual blocks, BatchNorm) in eval mode; input (N, 3, 224, 224)."""
    torch.manual_seed(seed)
    return _randomize_norms(ResNetStyle(**kwargs), seed)


def bert_style(seed: int = 0, **kwargs) -> BertStyle:
    """BERT-style encoder (separate q/k/v Linears) in eval mode; input token ids (N, T<=max_len)."""
    torch.manual_seed(seed)
    return _randomize_norms(BertStyle(**kwargs), seed)
