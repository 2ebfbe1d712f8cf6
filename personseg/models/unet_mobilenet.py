"""UNet-MobileNet: a MobileNet encoder (V1, V2 or V3 blocks, width multiplier `alpha`) and a UNet
decoder of transposed convolutions with skip connections, designed for 320x180 person masks."""
from __future__ import annotations

import torch
from torch import nn

from personseg.models.blocks import DepthwiseSeparable, make_divisible, pad_to_multiple
from personseg.models.encoders import ENCODERS
from personseg.models.registry import register_model
from personseg.models.pretrained import load_encoder_weights


class UpBlock(nn.Module):
    """x2 transposed conv, concat the skip, fuse with a depthwise-separable block."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
        self.fuse = DepthwiseSeparable(out_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """Four UpBlocks from stride 32 back to stride 2, then a last transposed conv to full resolution."""

    def __init__(self, encoder_channels: list[int], decoder_channels: list[int]):
        super().__init__()
        # deepest feature first; skips are the shallower taps in reverse order
        in_chs = [encoder_channels[-1]] + decoder_channels[:-1]
        skip_chs = encoder_channels[-2::-1]
        self.blocks = nn.ModuleList(
            UpBlock(i, s, o) for i, s, o in zip(in_chs, skip_chs, decoder_channels[:4])
        )
        self.final_up = nn.Sequential(
            nn.ConvTranspose2d(decoder_channels[3], decoder_channels[4], 4, 2, 1, bias=False),
            nn.BatchNorm2d(decoder_channels[4]),
            nn.ReLU(inplace=True),
        )

    def levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The UpBlocks' outputs, at strides 16, 8, 4 and 2 (the multi-task heads read the first three)."""
        x, out = features[-1], []
        for block, skip in zip(self.blocks, features[-2::-1]):
            x = block(x, skip)
            out.append(x)
        return out

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.final_up(self.levels(features)[-1])


class PresenceHead(nn.Module):
    """Is anyone in the picture at all? One logit from the encoder's two deepest maps (strides 16 and 32),
    each pooled by its mean and its max over the picture: a linear classifier (a logistic regression,
    `scripts/fit_presence.py` fits it on the frozen features). It reads the features only, so adding it
    leaves the mask as it was; the predictor zeroes the mask of a picture whose presence probability is
    under the model's `presence_threshold` (a person-free photo's false alarms go, a photo with a person
    keeps its mask untouched)."""

    def __init__(self, channels: tuple[int, int]):
        super().__init__()
        self.linear = nn.Linear(2 * sum(channels), 1)

    @staticmethod
    def pooled(features: list[torch.Tensor]) -> torch.Tensor:
        """(B, 2 * (C16 + C32)): the mean and the max of each of the two deepest maps."""
        return torch.cat([t for f in features[-2:] for t in (f.mean((2, 3)), f.amax((2, 3)))], dim=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(self.pooled(features))


def with_presence_head(model: nn.Module, info: dict, head: PresenceHead | None = None) -> tuple[nn.Module, dict]:
    """A checkpoint's `model` (described by `info`: arch, model_kwargs) rebuilt with a PresenceHead, every
    other weight carried over; the head holds `head`'s weights (another model's of the same trunk) or is
    fresh (to be fitted: scripts/fit_presence.py). Returns the model and `info` with model_kwargs["presence"]."""
    from personseg.models.registry import create_model

    kwargs = {**info["model_kwargs"], "presence": True}
    out = create_model(info["arch"], **kwargs)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("presence.")}
    if head is not None:
        state.update({f"presence.{k}": v for k, v in head.state_dict().items()})
    try:
        missing, unexpected = out.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"{info['arch']}: the weights do not fit it ({str(e).splitlines()[1].strip()})") from None
    if unexpected or any(not k.startswith("presence.") or head is not None for k in missing):
        raise ValueError(f"{info['arch']}: the weights do not fit it with a presence head "
                         f"({[*unexpected, *missing][:3]} do not fit)")
    return out, {**info, "model_kwargs": kwargs}


class UNetMobileNet(nn.Module):
    """(B, 3, H, W) normalized image -> (B, 1, H, W) person logits, for any H and W."""

    stride = 32
    decoder_class = UNetDecoder  # the recurrent variant swaps in its ConvGRU decoder

    def __init__(self, encoder: str = "mobilenet_v2", alpha: float = 1.0,
                 decoder_channels: tuple[int, ...] = (96, 32, 24, 16, 16), num_classes: int = 1,
                 encoder_weights: str | None = None, presence: bool = False):
        super().__init__()
        self.encoder = ENCODERS[encoder](alpha)
        self.decoder = self.decoder_class(self.encoder.channels, list(decoder_channels))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 1)
        self.presence = PresenceHead(tuple(self.encoder.channels[-2:])) if presence else None
        if encoder_weights:
            load_encoder_weights(self.encoder, encoder, alpha, encoder_weights)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's inputs, shallow to deep (the hybrid model attends over the deepest two)."""
        return self.encoder(x)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of what `forward` returns (the ONNX file's outputs)."""
        return ("logits", "presence") if self.presence is not None else ("logits",)

    def forward(self, x: torch.Tensor):
        """Person logits (B, 1, H, W); with a `PresenceHead`, also its logit (B, 1)."""
        x, (h, w) = pad_to_multiple(x, self.stride)
        features = self.features(x)
        logits = self.head(self.decoder(features))[..., :h, :w]
        return (logits, self.presence(features)) if self.presence is not None else logits


def _scaled(channels: tuple[int, ...], alpha: float) -> tuple[int, ...]:
    return tuple(make_divisible(c * alpha) for c in channels)


# Decoder widths per family, chosen to match the published sizes at 320x180: UNet-MobileNetV1
# alpha=1.0 ~12M parameters (its decoder scales with alpha), UNet-MobileNetV3 alpha=0.3 ~3M. The
# V2/V3 decoders keep a fixed width: ~3M at alpha=0.3 is more than a decoder shrunk by alpha can hold.
@register_model("unet_mobilenet_v1")
def unet_mobilenet_v1(alpha: float = 1.0, decoder_channels=None, **kwargs) -> UNetMobileNet:
    decoder_channels = decoder_channels or _scaled((384, 192, 96, 64, 32), alpha)
    return UNetMobileNet("mobilenet_v1", alpha, tuple(decoder_channels), **kwargs)


@register_model("unet_mobilenet_v2")
def unet_mobilenet_v2(alpha: float = 1.0, decoder_channels=(96, 32, 24, 16, 16), **kwargs) -> UNetMobileNet:
    return UNetMobileNet("mobilenet_v2", alpha, tuple(decoder_channels), **kwargs)


@register_model("unet_mobilenet_v3")
def unet_mobilenet_v3(alpha: float = 1.0, decoder_channels=(320, 160, 80, 40, 16), **kwargs) -> UNetMobileNet:
    return UNetMobileNet("mobilenet_v3", alpha, tuple(decoder_channels), **kwargs)
