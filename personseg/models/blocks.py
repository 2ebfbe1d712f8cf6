"""Building blocks of the MobileNet family (V1, V2, V3), shared by the encoders and decoders."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor` without losing more than 10%,
    as in the MobileNet papers (keeps kernels SIMD-friendly)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> activation. Index 0 is the conv and 1 the BN (pretrained-key mapping relies on it)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 dilation: int = 1, act: type[nn.Module] | None = nn.ReLU6):
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1 `conv_dw`: 3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
        super().__init__(
            ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, dilation=dilation, act=nn.ReLU),
            ConvBNAct(in_ch, out_ch, 1, act=nn.ReLU),
        )


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-and-excitation: channel gates from global average pooling, hard-sigmoid."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        squeezed = make_divisible(channels / reduction)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = F.hardsigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand -> kxk depthwise -> (SE) -> 1x1 linear projection, with a
    residual connection when shape is kept. `self.conv` follows torchvision's MobileNetV2 layout
    (expand ConvBNAct, depthwise ConvBNAct, projection conv, BN) so its pretrained keys map 1:1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, hidden: int, kernel: int = 3,
                 se: bool = False, act: type[nn.Module] = nn.ReLU6, dilation: int = 1):
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, dilation=dilation, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad (B, C, H, W) at the bottom/right so H and W divide by `multiple`.
    Returns the padded tensor and the original (H, W) to crop back to."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (h, w)
