"""Multi-task UNet-MobileNet: one encoder and decoder, three heads.

    logits, parts, heatmaps = model(x)    # (B, 1, H, W), (B, 6, H, W), (B, 17, ceil(H/4), ceil(W/4))

The person mask comes out as in `UNetMobileNet` (so its weights load into this model unchanged); the
body-part logits (personseg.parts.PART_NAMES) come from the decoder's full-resolution features, the
keypoint heatmaps (personseg.keypoints, COCO's 17) from its stride-4 features, as SimpleBaseline's
heatmaps do. Each head is two depthwise-separable blocks and a 1x1 conv: for about the cost of one model
it gives what MediaPipe ships as three (selfie segmentation, multiclass segmentation, pose).
"""
from __future__ import annotations

import torch
from torch import nn

from personseg.keypoints import COCO_KEYPOINTS, STRIDE
from personseg.models.blocks import DepthwiseSeparable, pad_to_multiple
from personseg.models.registry import register_model
from personseg.models.unet_mobilenet import UNetMobileNet
from personseg.parts import PART_NAMES


def _head(in_ch: int, width: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(DepthwiseSeparable(in_ch, width), DepthwiseSeparable(width, width), nn.Conv2d(width, out_ch, 1))


class MultiTaskUNet(UNetMobileNet):
    """(B, 3, H, W) -> (person logits, part logits, keypoint heatmaps) for any H and W."""

    outputs = ("logits", "parts", "heatmaps")

    def __init__(self, alpha: float = 1.0, decoder_channels: tuple[int, ...] = (96, 32, 24, 16, 16),
                 num_parts: int = len(PART_NAMES), num_keypoints: int = len(COCO_KEYPOINTS),
                 parts_width: int = 32, keypoints_width: int = 64, encoder_weights: str | None = None):
        super().__init__("mobilenet_v2", alpha, tuple(decoder_channels), 1, encoder_weights)
        self.parts_head = _head(decoder_channels[4], parts_width, num_parts)
        self.keypoints_head = _head(decoder_channels[2], keypoints_width, num_keypoints)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, (h, w) = pad_to_multiple(x, self.stride)
        features = self.features(x)
        y, levels = features[-1], []
        for block, skip in zip(self.decoder.blocks, features[-2::-1]):
            y = block(y, skip)
            levels.append(y)  # strides 16, 8, 4, 2
        full = self.decoder.final_up(y)
        hk, wk = (h + STRIDE - 1) // STRIDE, (w + STRIDE - 1) // STRIDE  # ceil; ONNX integer division truncates
        return (self.head(full)[..., :h, :w], self.parts_head(full)[..., :h, :w],
                self.keypoints_head(levels[2])[..., :hk, :wk])


@register_model("multitask_unet_mobilenet_v2")
def multitask_unet_mobilenet_v2(**kwargs) -> MultiTaskUNet:
    return MultiTaskUNet(**kwargs)
