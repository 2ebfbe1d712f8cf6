"""The classic U-Net (Ronneberger et al. 2015), with BatchNorm and padded convolutions: a
64-128-256-512 encoder, a 1024-channel bottleneck and four decoder blocks (~31M parameters)."""
from __future__ import annotations

import torch
from torch import nn

from personseg.models.blocks import pad_to_multiple
from personseg.models.registry import register_model


class DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class ClassicUNetEncoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        chs = [width * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.channels = chs
        self.inc = DoubleConv(3, chs[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b)) for a, b in zip(chs, chs[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.inc(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class ClassicUNetDecoder(nn.Module):
    def __init__(self, channels: list[int]):
        super().__init__()
        deep_to_shallow = channels[::-1]  # 1024, 512, 256, 128, 64
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(deep_to_shallow, deep_to_shallow[1:]))
        self.convs = nn.ModuleList(DoubleConv(2 * b, b) for b in deep_to_shallow[1:])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, conv, skip in zip(self.ups, self.convs, features[-2::-1]):
            x = conv(torch.cat([up(x), skip], dim=1))
        return x


class UNet(nn.Module):
    """(B, 3, H, W) -> (B, 1, H, W) logits for any H, W."""

    stride = 16

    def __init__(self, width: int = 64, num_classes: int = 1):
        super().__init__()
        self.encoder = ClassicUNetEncoder(width)
        self.decoder = ClassicUNetDecoder(self.encoder.channels)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.stride)
        return self.head(self.decoder(self.encoder(x)))[..., :h, :w]


@register_model("unet")
def unet(width: int = 64, **kwargs) -> UNet:
    return UNet(width, **kwargs)
