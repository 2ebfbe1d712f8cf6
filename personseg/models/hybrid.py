"""Hybrid CNN + transformer: the UNet-MobileNetV2 with self-attention on its two deepest levels.

The MobileNetV2 encoder (ImageNet weights load as for the UNet) sees local texture; a few transformer
layers on the stride-16 and stride-32 maps see the whole picture, which is what tells a person from a
person-shaped thing and ties the parts of a partly hidden body together. Each attention level is a
MobileViT block (Mehta & Rastegari, "MobileViT", ICLR 2022): a local conv, a 1x1 projection to the
transformer width, pre-norm transformer layers over the map's pixels as tokens, and a 1x1 projection back,
added to the block's input (MobileViT fuses by concat and a 3x3 conv; MobileViTv3 showed the residual
sum is as good and cheaper). MobileViT unfolds 2x2 patches first; at
stride 16 and 32 the maps are small enough (20x12 and 10x6 tokens at 320x180) to attend over every
pixel, as TopFormer does on its stride-64 tokens. Positions are a learned grid, resized bilinearly to
the map's size (as ViT does at a new resolution), so any input size works. The UNet decoder then
fuses the attended features with the skips.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from personseg.models.blocks import ConvBNAct
from personseg.models.registry import register_model
from personseg.models.unet_mobilenet import UNetMobileNet


class SelfAttention(nn.Module):
    """Multi-head self-attention written as matmuls and a softmax (exports to plain ONNX ops)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GlobalContext(nn.Module):
    """A MobileViT block over every pixel of a (B, C, H, W) map; returns the same shape."""

    def __init__(self, channels: int, dim: int, depth: int, heads: int = 4, grid: int = 16):
        super().__init__()
        self.local = nn.Sequential(ConvBNAct(channels, channels, 3, groups=channels), nn.Conv2d(channels, dim, 1))
        self.position = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)
        self.layers = nn.Sequential(*[TransformerLayer(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.back = ConvBNAct(dim, channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.local(x)
        y = y + F.interpolate(self.position, size=(h, w), mode="bilinear", align_corners=False)
        tokens = self.norm(self.layers(y.flatten(2).transpose(1, 2)))     # (B, H*W, dim)
        return x + self.back(tokens.transpose(1, 2).reshape(b, -1, h, w))


class HybridUNet(UNetMobileNet):
    """UNetMobileNet whose stride-16 and stride-32 features pass through GlobalContext blocks."""

    def __init__(self, alpha: float = 1.0, dims: tuple[int, int] = (96, 160), depths: tuple[int, int] = (1, 2),
                 heads: int = 4, decoder_channels: tuple[int, ...] = (96, 32, 24, 16, 16), num_classes: int = 1,
                 encoder_weights: str | None = None):
        super().__init__("mobilenet_v2", alpha, tuple(decoder_channels), num_classes, encoder_weights)
        c16, c32 = self.encoder.channels[3], self.encoder.channels[4]
        self.context16 = GlobalContext(c16, dims[0], depths[0], heads)
        self.context32 = GlobalContext(c32, dims[1], depths[1], heads)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.encoder(x)
        return f[:3] + [self.context16(f[3]), self.context32(f[4])]


@register_model("hybrid_mobilenet_v2")
def hybrid_mobilenet_v2(**kwargs) -> HybridUNet:
    return HybridUNet(**kwargs)
