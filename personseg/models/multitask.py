"""Multi-task UNet-MobileNet: one encoder and decoder, three heads.

    logits, parts, heatmaps = model(x)    # (B, 1, H, W), (B, 6, H, W), (B, 17, ceil(H/4), ceil(W/4))
    # with presence=True (the trunk's PresenceHead, as `accurate` has it) a fourth output, (B, 1)

The person mask comes out as in `UNetMobileNet` (so its weights load into this model unchanged); the
body-part logits (personseg.parts.PART_NAMES) and the keypoint heatmaps (personseg.keypoints, COCO's 17,
at stride 4 as SimpleBaseline's) come from the decoder's stride-16, -8 and -4 maps fused at stride 4.
The heads are a few depthwise-separable blocks: for little more than the cost of one model they give what
MediaPipe ships as three (selfie segmentation, multiclass segmentation, pose). Trained with the trunk
frozen (`model.freeze`), the person mask stays exactly the model the heads were added to. With
`heads_decoder` the heads read a decoder of their own (the trunk decoder's twin, trained with the heads
while the trunk stays frozen): features for joints, not only for the person's outline, for one more
decoder pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from personseg.keypoints import COCO_KEYPOINTS, STRIDE
from personseg.models.blocks import DepthwiseSeparable, pad_to_multiple
from personseg.models.registry import register_model
from personseg.models.unet_mobilenet import UNetMobileNet
from personseg.parts import PART_NAMES


class Heads(nn.Module):
    """The part and keypoint heads on the decoder's stride-16, -8 and -4 maps, fused at stride 4 (as
    DeepLabV3+ fuses its low-level features): part logits upsampled to the input, heatmaps at stride 4."""

    def __init__(self, level_channels: tuple[int, int, int], num_parts: int, num_keypoints: int, width: int = 96):
        super().__init__()
        self.fuse = DepthwiseSeparable(sum(level_channels), width)
        self.parts = nn.Sequential(DepthwiseSeparable(width, width), nn.Conv2d(width, num_parts, 1))
        self.keypoints = nn.Sequential(DepthwiseSeparable(width, width), DepthwiseSeparable(width, width),
                                       nn.Conv2d(width, num_keypoints, 1))
        # heatmaps are logits of a focal loss: start where a joint is rare (CenterNet's prior, p = 0.1)
        nn.init.constant_(self.keypoints[-1].bias, -2.19)

    def forward(self, s16: torch.Tensor, s8: torch.Tensor, s4: torch.Tensor, size: tuple[int, int]):
        up = lambda t: F.interpolate(t, size=s4.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        fused = self.fuse(torch.cat([s4, up(s8), up(s16)], dim=1))
        parts = F.interpolate(self.parts(fused), size=size, mode="bilinear", align_corners=False)
        return parts, self.keypoints(fused)


class MultiTaskUNet(UNetMobileNet):
    """(B, 3, H, W) -> (person logits, part logits, keypoint heatmaps) for any H and W."""

    def __init__(self, alpha: float = 1.0, decoder_channels: tuple[int, ...] = (96, 32, 24, 16, 16),
                 num_parts: int = len(PART_NAMES), num_keypoints: int = len(COCO_KEYPOINTS),
                 heads_width: int = 96, encoder_weights: str | None = None, heads_decoder: bool = False,
                 presence: bool = False):
        super().__init__("mobilenet_v2", alpha, tuple(decoder_channels), 1, encoder_weights, presence)
        self.heads = Heads(tuple(decoder_channels[:3]), num_parts, num_keypoints, heads_width)
        self.heads_decoder = self.decoder_class(self.encoder.channels, list(decoder_channels)) if heads_decoder else None

    def init_fresh(self, missing: list[str]) -> None:
        """After model.init loaded a checkpoint without it (`missing` keys): the heads' own decoder
        starts as a copy of the trunk's."""
        if self.heads_decoder is not None and any(k.startswith("heads_decoder.") for k in missing):
            self.heads_decoder.load_state_dict(self.decoder.state_dict())

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("logits", "parts", "heatmaps") + super().outputs[1:]  # the trunk's presence, if any

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, (h, w) = pad_to_multiple(x, self.stride)
        features = self.features(x)
        levels = self.decoder.levels(features)  # strides 16, 8, 4, 2
        logits = self.head(self.decoder.final_up(levels[-1]))
        if self.heads_decoder is not None:
            levels = self.heads_decoder.levels(features)
        parts, heatmaps = self.heads(levels[0], levels[1], levels[2], x.shape[-2:])
        hk, wk = (h + STRIDE - 1) // STRIDE, (w + STRIDE - 1) // STRIDE  # ceil; ONNX integer division truncates
        out = (logits[..., :h, :w], parts[..., :h, :w], heatmaps[..., :hk, :wk])
        return out + (self.presence(features),) if self.presence is not None else out


@register_model("multitask_unet_mobilenet_v2")
def multitask_unet_mobilenet_v2(**kwargs) -> MultiTaskUNet:
    return MultiTaskUNet(**kwargs)
