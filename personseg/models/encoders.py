"""MobileNet V1/V2/V3 encoders for the UNet-MobileNet family.

Each encoder is a flat `features` Sequential (torchvision's layout, so ImageNet weights map by key)
plus `taps`: the indices whose outputs feed the decoder. Five taps at strides 2, 4, 8, 16, 32: the
stem and four levels, each level opened by a stride-2 block followed by stride-1 blocks. `alpha`
scales every block's channels (rounded to multiples of 8).
"""
from __future__ import annotations

import torch
from torch import nn

from personseg.models.blocks import ConvBNAct, DepthwiseSeparable, InvertedResidual, make_divisible


class Encoder(nn.Module):
    def __init__(self, features: list[nn.Module], taps: list[int], channels: list[int]):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.taps = taps
        self.channels = channels  # output channels at each tap, shallow to deep

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> five feature maps at strides 2, 4, 8, 16, 32."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs


def mobilenet_v1(alpha: float = 1.0, dilate_last: bool = False) -> Encoder:
    """MobileNetV1 (Howard et al. 2017): a stride-2 stem conv, then depthwise-separable `conv_dw` blocks."""
    c = lambda n: make_divisible(n * alpha)  # noqa: E731
    last_stride, last_dilation = (1, 2) if dilate_last else (2, 1)
    # (in, out, stride) per conv_dw block, grouped by level
    levels = [
        [(32, 64, 1)],                                   # stride 2 (with the stem)
        [(64, 128, 2), (128, 128, 1)],                   # stride 4
        [(128, 256, 2), (256, 256, 1)],                  # stride 8
        [(256, 512, 2)] + [(512, 512, 1)] * 5,           # stride 16
        [(512, 1024, last_stride), (1024, 1024, 1)],     # stride 32
    ]
    features: list[nn.Module] = [ConvBNAct(3, c(32), 3, 2, act=nn.ReLU)]
    taps, channels = [], []
    for level_index, level in enumerate(levels):
        dilation = last_dilation if level_index == 4 else 1
        for cin, cout, stride in level:
            features.append(DepthwiseSeparable(c(cin), c(cout), stride, dilation))
        taps.append(len(features) - 1)
        channels.append(c(level[-1][1]))
    return Encoder(features, taps, channels)


def mobilenet_v2(alpha: float = 1.0, dilate_last: bool = False) -> Encoder:
    """MobileNetV2 (Sandler et al. 2018), torchvision layout without the final 1280-channel conv."""
    c = lambda n: make_divisible(n * alpha)  # noqa: E731
    # expansion t, output channels, repeats n, stride of the first block
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    features: list[nn.Module] = [ConvBNAct(3, c(32), 3, 2)]
    in_ch = c(32)
    for t, out, n, s in settings:
        dilation = 1
        if dilate_last and out >= 160:
            s, dilation = 1, 2
        for i in range(n):
            features.append(InvertedResidual(in_ch, c(out), s if i == 0 else 1, in_ch * t, dilation=dilation))
            in_ch = c(out)
    taps = [1, 3, 6, 13, 17]  # ends of the 16-, 24-, 32-, 96- and 320-channel groups
    channels = [c(16), c(24), c(32), c(96), c(320)]
    return Encoder(features, taps, channels)


def mobilenet_v3(alpha: float = 1.0, dilate_last: bool = False) -> Encoder:
    """MobileNetV3-Large (Howard et al. 2019): inverted residuals with squeeze-and-excitation and
    h-swish, ending with the 1x1 conv to 6x channels."""
    c = lambda n: make_divisible(n * alpha)  # noqa: E731
    RE, HS = nn.ReLU, nn.Hardswish
    # kernel, expansion (hidden), out, SE, activation, stride
    settings = [
        [(3, 16, 16, False, RE, 1)],
        [(3, 64, 24, False, RE, 2), (3, 72, 24, False, RE, 1)],
        [(5, 72, 40, True, RE, 2), (5, 120, 40, True, RE, 1), (5, 120, 40, True, RE, 1)],
        [(3, 240, 80, False, HS, 2), (3, 200, 80, False, HS, 1), (3, 184, 80, False, HS, 1),
         (3, 184, 80, False, HS, 1), (3, 480, 112, True, HS, 1), (3, 672, 112, True, HS, 1)],
        [(5, 672, 160, True, HS, 2), (5, 960, 160, True, HS, 1), (5, 960, 160, True, HS, 1)],
    ]
    features: list[nn.Module] = [ConvBNAct(3, c(16), 3, 2, act=HS)]
    in_ch, taps, channels = c(16), [], []
    for level_index, level in enumerate(settings):
        dilation = 2 if dilate_last and level_index == 4 else 1
        for kernel, hidden, out, se, act, stride in level:
            stride = 1 if dilation == 2 else stride
            features.append(InvertedResidual(in_ch, c(out), stride, c(hidden), kernel, se, act, dilation))
            in_ch = c(out)
        if level_index == 4:
            features.append(ConvBNAct(in_ch, c(960), 1, act=HS))
            in_ch = c(960)
        taps.append(len(features) - 1)
        channels.append(in_ch)
    return Encoder(features, taps, channels)


ENCODERS = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "mobilenet_v3": mobilenet_v3}
