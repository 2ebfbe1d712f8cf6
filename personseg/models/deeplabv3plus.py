"""DeepLabV3+ (Chen et al. 2018) on a MobileNet encoder: the last level dilated instead of strided
(output stride 16), atrous spatial pyramid pooling (ASPP) with separable convs, and a decoder that
fuses the ASPP output with the stride-4 low-level features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from personseg.models.blocks import ConvBNAct, DepthwiseSeparable, pad_to_multiple
from personseg.models.encoders import ENCODERS
from personseg.models.pretrained import load_encoder_weights
from personseg.models.registry import register_model


class ASPP(nn.Module):
    """1x1 conv, three atrous separable 3x3 convs, and image pooling, concatenated and projected."""

    def __init__(self, in_ch: int, out_ch: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(in_ch, out_ch, 1, act=nn.ReLU)]
            + [DepthwiseSeparable(in_ch, out_ch, dilation=r) for r in rates]
        )
        # no BatchNorm after global pooling: it would see one value per channel at batch size 1
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))
        self.project = ConvBNAct(out_ch * (len(rates) + 2), out_ch, 1, act=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabDecoder(nn.Module):
    def __init__(self, encoder_channels: list[int], aspp_channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.aspp = ASPP(encoder_channels[-1], aspp_channels, rates)
        self.low_level = ConvBNAct(encoder_channels[1], 48, 1, act=nn.ReLU)
        self.fuse = nn.Sequential(DepthwiseSeparable(aspp_channels + 48, aspp_channels),
                                  DepthwiseSeparable(aspp_channels, aspp_channels))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(features[1])  # stride 4
        x = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, low], dim=1))


class DeepLabV3Plus(nn.Module):
    """(B, 3, H, W) -> (B, 1, H, W) logits; predicted at stride 4 and upsampled bilinearly."""

    stride = 16

    def __init__(self, encoder: str = "mobilenet_v2", alpha: float = 1.0, aspp_channels: int = 128,
                 atrous_rates: tuple[int, ...] = (3, 6, 9), num_classes: int = 1,
                 encoder_weights: str | None = None):
        super().__init__()
        # rates (3, 6, 9) rather than the paper's (6, 12, 18): at 320x180 the stride-16 map is only 20x12
        self.encoder = ENCODERS[encoder](alpha, dilate_last=True)
        self.decoder = DeepLabDecoder(self.encoder.channels, aspp_channels, tuple(atrous_rates))
        self.head = nn.Conv2d(aspp_channels, num_classes, 1)
        if encoder_weights:
            load_encoder_weights(self.encoder, encoder, alpha, encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.stride)
        logits = self.head(self.decoder(self.encoder(x)))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


@register_model("deeplabv3plus")
def deeplabv3plus(**kwargs) -> DeepLabV3Plus:
    return DeepLabV3Plus(**kwargs)
