"""Plain-torch ViTs shaped like timm's (fused qkv Linear) and torchvision's (nn.MultiheadAttention),
so CI covers those architectures without the libraries; plus a MobileNetV3-style block (hardswish)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


class SqueezeExcite(nn.Module):
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
        self.se = SqueezeExcite(expand, 12)
        self.proj, self.bn3 = nn.Conv2d(expand, c, 1, bias=False), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = F.hardswish(self.bn0(self.stem(x)), inplace=True)
        y = F.hardswish(self.bn1(self.exp(x)), inplace=True)
        y = F.hardswish(self.bn2(self.dw(y)), inplace=True)
        y = self.bn3(self.proj(self.se(y)))
        return self.fc((x + y).mean((2, 3)))
