"""Small models, one per structured-pruning pattern, with non-trivial norm statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


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


class EncoderLayer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, ffn: int = 64, explicit: bool = False):
        super().__init__()
        self.attn = SelfAttention(dim, heads, explicit)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class TinyEncoder(nn.Module):
    """Token + position embedding, encoder layers, classifier on the mean token."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2,
                 seq: int = 8, explicit: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.5)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn, explicit) for _ in range(layers))
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        x = self.ln(self.tok(ids) + self.pos)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(1))


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
