"""The models the tests build, in one place (the package's own benchmark models are in
``sparsify.models.testbeds``; tests use those rather than copies).

- user-side models and data, referenced as ``"tests.models:<attr>"`` by the CLI, run
  manifests, recipes and ``--trust-code`` values;
- small torch models pruned at construction and exported densely (sparse export, CSR pass,
  runtime);
- one model per structured-pruning pattern, and ViTs shaped like timm's and torchvision's;
- sparse ONNX graphs built directly with ``onnx.helper`` (no torch export), mixing
  ``ai.sparsify`` ops, numpy glue and an ONNX Runtime segment (fuzz and graph checks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from sparsify.sparse_ops import CONV_OP, DOMAIN, LINEAR_OP, make_node


# -- user-side models and data ('tests.models:<attr>') ----------------------------------------


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
        if os.environ.get("RANK") == "1":
            os._exit(9)
        return self.inner[i]


def dying_dataset():
    return _DiesOnRankOne()


# -- masked models exported densely (sparse export, CSR pass, runtime) ------------------------

def prune_(layer: nn.Module, density: float, seed: int) -> nn.Module:
    """Zero all but ``density`` of ``layer.weight`` (random unstructured mask), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = torch.rand(layer.weight.shape, generator=g) < density
        layer.weight.mul_(keep)
    return layer


def block_prune_(layer: nn.Module, block: tuple[int, int], density: float, seed: int) -> nn.Module:
    """Zero all but about ``density`` of the R x C blocks of ``layer.weight``'s 2-D view (a
    conv's ``weight.reshape(out, -1)``; random), in place."""
    r, c = block
    view = layer.weight.view(layer.weight.shape[0], -1)
    rows, cols = view.shape
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = torch.rand(rows // r, cols // c, generator=g) < density
        view.mul_(keep.repeat_interleave(r, 0).repeat_interleave(c, 1))
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
    """3x3 conv-ReLU, 1x1 conv-ReLU, residual 3x3 conv + add + ReLU, strided conv, mean, Linear.

    ``blocks``: the four convs pruned in those R x C blocks (a dense head) instead of every
    layer unstructured."""

    def __init__(self, density: float = 0.1, seed: int = 0, blocks: tuple[tuple[int, int], ...] | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.c4 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.head = nn.Linear(24, 10)
        convs = (self.c1, self.c2, self.c3, self.c4)
        for i, layer in enumerate(convs + (self.head,)):
            if blocks is None:
                prune_(layer, density, seed + i)
            elif i < len(convs):
                block_prune_(layer, blocks[i], density, seed + i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        y = torch.relu(y + self.c3(y))
        y = torch.relu(self.c4(y))
        return self.head(y.mean(dim=(2, 3)))


# The block CNN's convs: 4x1 (3x3), 16x1 (1x1), 1x4 (3x3: no conv block kernel, its CSR
# runs) and 8x1 (3x3, stride 2).
CNN_BLOCKS = ((4, 1), (16, 1), (1, 4), (8, 1))


def block_cnn(density: float = 0.3, seed: int = 0) -> CNN:
    """The CNN with its convs pruned in CNN_BLOCKS blocks."""
    return CNN(density, seed, CNN_BLOCKS)


EXAMPLES = {"mlp": (32,), "gelu": (4, 16), "cnn": (3, 10, 10), "block": (32,), "block_cnn": (3, 12, 12)}


def build(kind: str, **kwargs) -> nn.Module:
    """A fresh model of ``kind`` in eval mode."""
    return {"mlp": MLP, "gelu": GeluMLP, "cnn": CNN, "block": BlockMLP, "block_cnn": block_cnn}[kind](**kwargs).eval()


def export(kind: str, path: Path, **kwargs) -> tuple[nn.Module, Path]:
    """Build ``kind`` and export it densely (dynamic batch) to ``path``."""
    from sparsify.export.onnx_export import export_onnx

    model = build(kind, **kwargs)
    export_onnx(model, (torch.randn(1, *EXAMPLES[kind]),), path, ["x"], ["y"])
    return model, path


def inputs(kind: str, batch: int, seed: int = 0) -> np.ndarray:
    """Seeded unit-scale float32 inputs for ``kind`` at ``batch``."""
    return np.random.default_rng(seed).standard_normal((batch, *EXAMPLES[kind])).astype(np.float32)


# -- structured-pruning patterns (norms with non-trivial statistics) --------------------------

def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm/LayerNorm non-trivial statistics and affine parameters; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def small_resnet() -> nn.Module:
    """The package's ResNet testbed at test size: 7x7 stem, two 16-channel basic blocks, 5 classes."""
    from sparsify.models.testbeds import resnet_style

    return resnet_style(blocks=(2,), widths=(16,), num_classes=5)


def small_bert(layers: int = 2) -> nn.Module:
    """The package's BERT testbed at test size: vocabulary 50, width 32, 4 heads, FFN 64, 8 tokens, 3 classes."""
    from sparsify.models.testbeds import bert_style

    return bert_style(vocab=50, dim=32, heads=4, ffn=64, layers=layers, max_len=8, num_classes=3)


class LinearChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 32), nn.Linear(32, 24), nn.Linear(24, 5)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


class ConvBNReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(20)
        self.c = nn.Conv2d(20, 10, 3, padding=1)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        y = self.bn(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1))
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class SplitChunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(3, 12, 1)
        self.c1, self.c2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.d1, self.d2 = nn.Conv2d(4, 6, 1), nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        p, q = torch.chunk(F.relu(self.a(x)), 2, dim=1)
        r, s = torch.split(F.relu(self.b(x)), [4, 8], dim=1)
        y = self.c1(p) + self.c2(q) + self.d1(r) + self.d2(s)
        return self.fc(y.mean((2, 3)))


class DepthwiseGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 16, 1)
        self.gc, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.pw1(x)))
        x = F.relu(self.bn2(self.dw(x)))
        x = F.relu(self.pw2(x))
        x = F.relu(self.bn3(self.gc(x)))
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.se1, self.se2 = nn.Linear(16, 8), nn.Linear(8, 16)
        self.out = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        s = x.mean((2, 3))
        s = torch.sigmoid(self.se2(F.relu(self.se1(s))))
        x = x * s[:, :, None, None]
        return self.fc(self.out(x).mean((2, 3)))


class ConvFlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 3)

    def forward(self, x):
        x = torch.flatten(F.relu(self.conv(x)), 1)
        return self.fc2(F.relu(self.fc1(x)))


class GlobalPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), (1, 1))
        return self.fc(torch.flatten(x, 1))


class LayerNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(10, 32), nn.LayerNorm(32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.ln(self.fc1(x))))


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int = 2):
        super().__init__()
        self.g = groups
        self.conv1, self.bn = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        b, c, h, w = x.shape
        x = x.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class MHABlock(nn.Module):
    """nn.MultiheadAttention between two Linears (heads pruned whole)."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.out(a + h)


class SelfAttention(nn.Module):
    """Separate q/k/v Linears reshaped into heads; scaled_dot_product_attention or explicit."""

    def __init__(self, dim: int = 32, heads: int = 4, explicit: bool = False):
        super().__init__()
        self.h, self.explicit = heads, explicit
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, c = x.shape
        d = c // self.h
        q = self.q(x).view(b, t, self.h, d).transpose(1, 2)
        k = self.k(x).view(b, t, self.h, d).transpose(1, 2)
        v = self.v(x).view(b, t, self.h, d).transpose(1, 2)
        if self.explicit:
            att = torch.softmax(q @ k.transpose(-2, -1) * (d ** -0.5), dim=-1)
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


class TransformerFFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.ln = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 48), nn.Linear(48, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc2(F.gelu(self.fc1(self.ln(h))))
        return self.out(h)


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 4, stride=4)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        return self.fc(self.ln(x).mean(1))


class EmbeddingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 3)

    def forward(self, ids):
        return self.fc2(F.relu(self.fc1(self.emb(ids)))).mean(1)


class Conv1D(nn.Module):
    """GPT-2's Conv1D: y = x @ W + b with W of shape (in, out)."""

    def __init__(self, nx: int, nf: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * nx ** -0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        shape = x.shape[:-1] + (self.bias.shape[0],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


class GPT2MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(12, 32), Conv1D(32, 12)
        self.mm = nn.Parameter(torch.randn(12, 20) * 0.3)
        self.mm_bias = nn.Parameter(torch.randn(20) * 0.1)
        self.out = nn.Linear(20, 3)

    def forward(self, x):
        h = self.c_proj(F.gelu(self.c_fc(x)))
        return self.out(F.relu(h @ self.mm + self.mm_bias))


class Opaque(nn.Module):
    """Channels go through an op without a channel rule (cumsum over channels)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = torch.cumsum(h, dim=-1)
        return self.fc3(F.relu(self.fc2(h)))


class GPT2Attention(nn.Module):
    """GPT-2 style: packed c_attn (Conv1D, 3C outputs) split into q/k/v, causal mask via where."""

    def __init__(self, dim: int = 32, heads: int = 4, seq: int = 8):
        super().__init__()
        self.h, self.dim = heads, dim
        self.wte = nn.Embedding(50, dim)
        self.c_attn, self.c_proj = Conv1D(dim, 3 * dim), Conv1D(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(seq, seq)).view(1, 1, seq, seq))
        self.lm = nn.Linear(dim, 50, bias=False)

    def _heads(self, x):
        return x.view(x.size()[:-1] + (self.h, x.size(-1) // self.h)).permute(0, 2, 1, 3)

    def forward(self, ids):
        h = self.wte(ids)
        q, k, v = (self._heads(t) for t in self.c_attn(h).split(self.dim, dim=2))
        w = torch.matmul(q, k.transpose(-1, -2)) / (v.size(-1) ** 0.5)
        t = q.size(-2)
        w = torch.where(self.bias[:, :, :t, :t].bool(), w, torch.tensor(torch.finfo(w.dtype).min))
        a = torch.matmul(torch.softmax(w, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return self.lm(h + self.c_proj(a.view(a.size()[:-2] + (self.dim,))))


class MaskedSelfAttention(nn.Module):
    """HF-BERT style: a second input (attention mask) added to the scores."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.inp = nn.Linear(6, dim)
        self.query, self.key, self.value, self.dense = (nn.Linear(dim, dim) for _ in range(4))
        self.out = nn.Linear(dim, 3)

    def _heads(self, x):
        return x.view(x.size()[:-1] + (self.h, self.d)).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        h = self.inp(x)
        q, k, v = self._heads(self.query(h)), self._heads(self.key(h)), self._heads(self.value(h))
        s = torch.matmul(q, k.transpose(-1, -2)) / self.d ** 0.5 + (1.0 - mask[:, None, None, :]) * -10000.0
        c = torch.matmul(torch.softmax(s, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return self.out(self.dense(c.view(c.size()[:-2] + (self.h * self.d,))) + h)


class ConvGroupNorm(nn.Module):
    """conv -> GroupNorm(4 groups) -> SiLU -> conv: whole norm groups are pruned."""

    def __init__(self):
        super().__init__()
        self.conv1, self.gn = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.conv2(F.silu(self.gn(self.conv1(x)))).mean((2, 3)))


class UpsamplePad(nn.Module):
    """FPN/UNet-style: upsample and pad the pruned channels, then a conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.pad(F.interpolate(y, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect")
        y = y + F.interpolate(F.relu(self.bn(self.c1(x))), size=y.shape[-2:], mode="bilinear")
        return self.fc(self.c2(y).mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1, residual."""

    def __init__(self, c: int = 16, e: int = 4):
        super().__init__()
        self.stem, self.b0 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.pw, self.b1 = nn.Conv2d(c, c * e, 1, bias=False), nn.BatchNorm2d(c * e)
        self.dw, self.b2 = nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e, bias=False), nn.BatchNorm2d(c * e)
        self.pj, self.b3 = nn.Conv2d(c * e, c, 1, bias=False), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        x = F.relu6(self.b0(self.stem(x)))
        y = F.relu6(self.b2(self.dw(F.relu6(self.b1(self.pw(x))))))
        return self.fc((x + self.b3(self.pj(y))).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, channels-last LayerNorm and MLP, layer scale, residual."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.dw, self.ln = nn.Conv2d(c, c, 7, padding=3, groups=c), nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(F.gelu(self.fc1(self.ln(self.dw(x).permute(0, 2, 3, 1)))))
        return self.head((x + (self.gamma * y).permute(0, 3, 1, 2)).mean((2, 3)))


# -- ViTs shaped like timm's and torchvision's, a MobileNetV3 block ---------------------------

class TimmAttention(nn.Module):
    """timm's Attention: one qkv Linear, reshape (B, N, 3, H, D), permute, unbind."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    """timm VisionTransformer / DeiT layout: patch conv, cls token, pos_embed, pre-norm blocks, head."""

    def __init__(self, image: int = 16, patch: int = 4, dim: int = 32, heads: int = 4, mlp: int = 64,
                 depth: int = 2, classes: int = 5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.1)
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class TorchvisionEncoderBlock(nn.Module):
    """torchvision's EncoderBlock: LN, nn.MultiheadAttention, LN, MLP (Linear-GELU-Linear)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, dim), nn.Dropout(0.0))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class TorchvisionViT(nn.Module):
    """torchvision VisionTransformer layout: conv_proj, class_token, encoder.pos_embedding, heads."""

    def __init__(self, image: int = 16, patch: int = 4, dim: int = 32, heads: int = 4, mlp: int = 64,
                 depth: int = 2, classes: int = 5):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.1)
        self.layers = nn.Sequential(*[TorchvisionEncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Sequential(nn.Linear(dim, classes))

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x)
        x = x.reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = self.ln(self.layers(x + self.pos_embedding))
        return self.heads(x[:, 0])


class HardSqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-excite: pool, 1x1 conv, ReLU, 1x1 conv, hardsigmoid_ gate."""

    def __init__(self, c: int, r: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))), inplace=True)


class MobileNetV3Block(nn.Module):
    """MobileNetV3's inverted residual: expand 1x1 + BN + hardswish_, depthwise + BN + hardswish_, SE, project."""

    def __init__(self, c: int = 16, expand: int = 48):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.exp, self.bn1 = nn.Conv2d(c, expand, 1, bias=False), nn.BatchNorm2d(expand)
        self.dw, self.bn2 = nn.Conv2d(expand, expand, 3, padding=1, groups=expand, bias=False), nn.BatchNorm2d(expand)
        self.se = HardSqueezeExcite(expand, 12)
        self.proj, self.bn3 = nn.Conv2d(expand, c, 1, bias=False), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = F.hardswish(self.bn0(self.stem(x)), inplace=True)
        y = F.hardswish(self.bn1(self.exp(x)), inplace=True)
        y = F.hardswish(self.bn2(self.dw(y)), inplace=True)
        y = self.bn3(self.proj(self.se(y)))
        return self.fc((x + y).mean((2, 3)))


# -- sparse ONNX graphs built with onnx.helper ------------------------------------------------

OPSET = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]


def _csr_of(w: np.ndarray, index_dtype=np.int32, ptr_dtype=np.int64):
    """(data, indices, indptr) of a 2-D array, zeros dropped."""
    rows, cols = np.nonzero(w)
    indptr = np.zeros(w.shape[0] + 1, dtype=ptr_dtype)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return w[rows, cols].astype(w.dtype), cols.astype(index_dtype), indptr


def _sparse(rng, rows, cols, density, dtype):
    w = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)
    w[rng.integers(0, rows)] = 0.0  # one empty row
    return w.astype(dtype)


class Builder:
    """Collects nodes and initializers; ``linear``/``conv`` add an ai.sparsify node."""

    def __init__(self, seed: int, dtype=np.float32, index_dtype=np.int32, ptr_dtype=np.int64) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype, self.index_dtype, self.ptr_dtype = np.dtype(dtype), index_dtype, ptr_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _csr(self, name, w, bias):
        data, idx, ptr = _csr_of(w, self.index_dtype, self.ptr_dtype)
        names = tuple(self.const(f"{name}.{part}", a) for part, a in (("data", data), ("indices", idx), ("indptr", ptr)))
        b = self.const(f"{name}.bias", self.rng.standard_normal(w.shape[0]).astype(self.dtype)) if bias else None
        return names, b

    def linear(self, x, out, name, rows, cols, activation="none", density=0.3, bias=True):
        w = _sparse(self.rng, rows, cols, density, self.dtype)
        names, b = self._csr(name, w, bias)
        self.nodes.append(make_node(LINEAR_OP, x, names, b, out, name, (rows, cols), activation, f"{name}.weight",
                                    (rows, cols), "Gemm"))
        return out

    def conv(self, x, out, name, cout, cin, k, stride=1, pad=1, group=1, activation="none", density=0.3):
        cols = cin // group * k * k
        w = _sparse(self.rng, cout, cols, density, self.dtype)
        names, b = self._csr(name, w, True)
        self.nodes.append(make_node(CONV_OP, x, names, b, out, name, (cout, cols), activation, f"{name}.weight",
                                    (cout, cin // group, k, k), "Conv", kernel_shape=(k, k), strides=(stride, stride),
                                    pads=(pad, pad, pad, pad), dilations=(1, 1), group=group))
        return out

    def node(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"n_{outputs[0]}", **attrs))
        return outputs[0]

    def model(self, x_shape, y_shape) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        graph = helper.make_graph(self.nodes, "sparse", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                                  [helper.make_tensor_value_info("y", elem, list(y_shape))], self.inits)
        return helper.make_model(graph, opset_imports=OPSET, ir_version=9)


def sparse_onnx_mlp(seed: int = 0, **kw) -> onnx.ModelProto:
    """x[N, 32] -> SparseLinear relu -> SparseLinear -> Softmax (ORT) -> Add -> SparseLinear -> y."""
    b = Builder(seed, **kw)
    h = b.linear("x", "h1", "fc1", 64, 32, "relu")
    h = b.linear(h, "h2", "fc2", 48, 64, "gelu", density=0.5)
    h = b.node("Softmax", [h], ["s"], axis=-1)
    h = b.node("Add", [h, b.const("shift", np.full((1, 48), 0.5, b.dtype))], ["a"])
    b.linear(h, "y", "head", 10, 48, density=0.9)
    return b.model(["N", 32], ["N", 10])


def sparse_onnx_cnn(seed: int = 0, **kw) -> onnx.ModelProto:
    """x[N, 3, 10, 10] -> conv s1 -> Add const -> conv s2 (grouped) -> Transpose (ORT) -> ReduceMean -> Reshape -> Linear."""
    b = Builder(seed, **kw)
    h = b.conv("x", "c1", "conv1", 16, 3, 3, activation="relu")
    h = b.node("Add", [h, b.const("bias_map", b.rng.standard_normal((1, 16, 10, 10)).astype(b.dtype))], ["a1"])
    h = b.conv(h, "c2", "conv2", 24, 16, 3, stride=2, group=2)
    h = b.node("Transpose", [h], ["t"], perm=[0, 1, 3, 2])
    h = b.node("ReduceMean", [h, b.const("axes", np.array([2, 3], np.int64))], ["m"], keepdims=0)
    h = b.node("Reshape", [h, b.const("shape", np.array([0, -1], np.int64))], ["r"])
    b.linear(h, "y", "head", 10, 24)
    return b.model(["N", 3, 10, 10], ["N", 10])


SPARSE_ONNX_SHAPES = {"mlp": (32,), "cnn": (3, 10, 10)}


def sparse_onnx_feeds(kind: str, batch: int, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Seeded unit-scale inputs for ``kind``."""
    return {"x": np.random.default_rng(seed).standard_normal((batch, *SPARSE_ONNX_SHAPES[kind])).astype(dtype)}
