"""Recurrent UNet-MobileNet: the UNet-MobileNet encoder and decoder with a ConvGRU after each of the
decoder's four up-blocks, so a frame's mask can use what earlier frames showed (RVM's recurrent decoder,
Lin et al. 2021, on our UNet-MobileNet blocks).

State is explicit tensors in and out; the module keeps none, which is also what ONNX export needs:

    logits, state = model(frames)            # first frame: state None = zeros
    logits, state = model(next_frames, state)

`state` is a list of four tensors, one per decoder level at strides 16, 8, 4 and 2 of the padded input
(H and W rounded up to multiples of 32): state[i] is (B, decoder_channels[i] // 2, Hp / 2**(4 - i),
Wp / 2**(4 - i)); `state_shapes(B, H, W)` computes them. As in RVM each GRU runs on half of its level's
channels and the other half passes through: recurrence at a quarter of the cost.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from personseg.models.blocks import pad_to_multiple
from personseg.models.registry import register_model
from personseg.models.unet_mobilenet import UNetDecoder, UNetMobileNet


class ConvGRU(nn.Module):
    """Convolutional GRU (Ballas et al. 2016): z, r = sigmoid(W_g [x, h]); c = tanh(W_c [x, r * h]);
    h' = (1 - z) * h + z * c. (B, C, H, W) input and state -> (B, C, H, W) new state.

    `out_scale` (per channel, starts at 0.01) weighs the state in the decoder's residual output
    x + out_scale * h' (see RecurrentDecoder); small, not 0, so the cell's weights get gradients at once."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.gates = nn.Conv2d(2 * channels, 2 * channels, kernel, padding=kernel // 2)
        self.candidate = nn.Conv2d(2 * channels, channels, kernel, padding=kernel // 2)
        self.out_scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.01))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * c


class RecurrentDecoder(UNetDecoder):
    """The UNet decoder (same up-blocks and final up-sampling) with a ConvGRU on half the channels of
    each up-block's output.

    residual (set by the model): those channels become x + out_scale * h (out_scale starts at 0.01),
    so a model started from its stateless twin's weights computes almost exactly what the twin did and
    learns how much of the state to use; not residual (RVM's design): they are replaced by h, which
    starts as noise that the pretrained decoder must first learn to ignore."""

    residual = True

    def __init__(self, encoder_channels: list[int], decoder_channels: list[int]):
        super().__init__(encoder_channels, decoder_channels)
        self.state_channels = [c // 2 for c in decoder_channels[:4]]
        self.grus = nn.ModuleList(ConvGRU(c) for c in self.state_channels)

    def forward(self, features: list[torch.Tensor], state: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = features[-1]
        new_state = []
        for i, (block, gru, skip) in enumerate(zip(self.blocks, self.grus, features[-2::-1])):
            x = block(x, skip)
            passed, recurrent = x.split([x.shape[1] - self.state_channels[i], self.state_channels[i]], dim=1)
            h = torch.zeros_like(recurrent) if state is None else state[i]
            h = gru(recurrent, h)
            new_state.append(h)
            x = torch.cat([passed, recurrent + gru.out_scale * h if self.residual else h], dim=1)
        return self.final_up(x), new_state


class RecurrentUNetMobileNet(UNetMobileNet):
    """(B, 3, H, W) normalized frames and the previous state -> ((B, 1, H, W) person logits, new state)."""

    decoder_class = RecurrentDecoder

    def __init__(self, *args, residual: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder.residual = residual  # see RecurrentDecoder

    def state_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the four state tensors for (batch, 3, height, width) frames."""
        hp, wp = math.ceil(height / self.stride) * self.stride, math.ceil(width / self.stride) * self.stride
        return [(batch, c, hp // 2 ** (4 - i), wp // 2 ** (4 - i)) for i, c in enumerate(self.decoder.state_channels)]

    def forward(self, frames: torch.Tensor, state: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, (h, w) = pad_to_multiple(frames, self.stride)
        y, state = self.decoder(self.encoder(x), state)
        return self.head(y)[..., :h, :w], state


class ClipRunner(nn.Module):
    """A recurrent model over clips, for training and validation: (B, T, 3, H, W) -> (B * T, 1, H, W)
    logits (batch-major, like `clip.flatten(0, 1)`), the state carried from frame to frame and zeros
    before the first; (B, 3, H, W) stills run as one-frame clips. Holds no weights of its own."""

    def __init__(self, model: RecurrentUNetMobileNet, memory_format=torch.contiguous_format):
        super().__init__()
        self.model, self.memory_format = model, memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.model(x)[0]
        state, outputs = None, []
        for t in range(x.shape[1]):
            logits, state = self.model(x[:, t].contiguous(memory_format=self.memory_format), state)
            outputs.append(logits)
        return torch.stack(outputs, 1).flatten(0, 1)


# Same decoder widths as the stateless unet_mobilenet_v2 / _v3.
@register_model("recurrent_unet_mobilenet_v2")
def recurrent_unet_mobilenet_v2(alpha: float = 1.0, decoder_channels=(96, 32, 24, 16, 16), **kwargs):
    return RecurrentUNetMobileNet("mobilenet_v2", alpha, tuple(decoder_channels), **kwargs)


@register_model("recurrent_unet_mobilenet_v3")
def recurrent_unet_mobilenet_v3(alpha: float = 1.0, decoder_channels=(320, 160, 80, 40, 16), **kwargs):
    return RecurrentUNetMobileNet("mobilenet_v3", alpha, tuple(decoder_channels), **kwargs)
