"""Models shaped like the ones people deploy, for the model benchmarks (seeded random weights).

- :func:`bert_base`: a BERT-base-shaped encoder (hidden 768, 12 heads, FFN 3072, 12 layers,
  separate q/k/v/out projections, exact GELU, post-LN); input token ids (N, 128).
- :func:`vit_base`: a ViT-Base/16-shaped vision transformer (224x224, patch 16 -> 196 tokens
  plus a class token, hidden 768, 12 heads, FFN 3072, 12 layers, pre-LN); input (N, 3, 224, 224).
- :func:`resnet50`: a ResNet-50-shaped CNN (stem, bottleneck blocks 3/4/6/3 with 1x1, 3x3
  and strided convs, BatchNorm, ReLU); input (N, 3, 224, 224).
- :func:`mobilenet_v2`: a MobileNetV2-shaped CNN (3x3/2 stem, 17 inverted residual blocks:
  1x1 expand, 3x3 depthwise, 1x1 project, BatchNorm, ReLU6; 1x1 to 1280, pool, fc); input
  (N, 3, 224, 224).

Referenced by runs as ``benchmarks.deploy_models:<name>``; the keyword arguments shrink them
for tests (``layers=1``, ``blocks=(1, 1, 1, 1)``...). Norm statistics are non-trivial so that
exactness checks exercise them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsify.models.testbeds import Attention, _randomize_norms, bert_style


class PreLNLayer(nn.Module):
    """ViT's layer: x = x + attn(LN(x)); x = x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViTBase(nn.Module):
    """Patch embedding (a strided conv), class token, position embeddings, pre-LN layers, head."""

    def __init__(self, image: int = 224, patch: int = 16, dim: int = 768, heads: int = 12, ffn: int = 3072,
                 layers: int = 12, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.ModuleList(PreLNLayer(dim, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln(x[:, 0]))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided in the first block of a stage), 1x1 expand, BN after each, residual."""

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = 4 * width
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """ResNet-50 layout: 7x7/2 stem, 3x3/2 max pool, bottleneck stages, global pool, fc."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), widths: tuple[int, ...] = (64, 128, 256, 512),
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(64)
        layers, c = [], 64
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(Bottleneck(c, w, stride=2 if (j == 0 and i > 0) else 1))
                c = 4 * w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (skipped at ratio 1), 3x3 depthwise (strided in the
    first block of a stage), 1x1 project, BatchNorm after each, ReLU6 after the first two,
    residual where shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, ratio: int) -> None:
        super().__init__()
        hidden = c_in * ratio
        layers: list[nn.Module] = []
        if ratio != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 layout (width 1.0): 3x3/2 stem to 32, inverted residual stages
    (expansion, channels, blocks, stride) as in the paper, 1x1 to 1280, global pool, fc."""

    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

    def __init__(self, stages: tuple[tuple[int, int, int, int], ...] = STAGES, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        c = 32
        for ratio, c_out, n, stride in stages:
            for j in range(n):
                layers.append(InvertedResidual(c, c_out, stride if j == 0 else 1, ratio))
                c = c_out
        layers += [nn.Conv2d(c, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def bert_base(seed: int = 0, **kwargs) -> nn.Module:
    """BERT-base-shaped encoder in eval mode (``sparsify.models.testbeds.BertStyle`` at BERT-base
    sizes); input token ids (N, T <= max_len)."""
    sizes = {"dim": 768, "heads": 12, "ffn": 3072, "layers": 12, "max_len": 128, **kwargs}
    return bert_style(seed, **sizes)


def _seeded(cls: type[nn.Module], seed: int, kwargs: dict) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_norms(cls(**kwargs), seed)


def vit_base(seed: int = 0, **kwargs) -> ViTBase:
    """ViT-Base/16-shaped vision transformer in eval mode; input (N, 3, image, image)."""
    return _seeded(ViTBase, seed, kwargs)


def resnet50(seed: int = 0, **kwargs) -> ResNet50:
    """ResNet-50-shaped CNN in eval mode; input (N, 3, 224, 224)."""
    return _seeded(ResNet50, seed, kwargs)


def mobilenet_v2(seed: int = 0, **kwargs) -> MobileNetV2:
    """MobileNetV2-shaped CNN in eval mode; input (N, 3, 224, 224)."""
    return _seeded(MobileNetV2, seed, kwargs)
