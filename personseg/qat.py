"""Quantization-aware training: fine-tune with simulated int8 rounding so the weights survive ONNX
Runtime's int8 quantization.

    personseg train configs/default.yaml --out runs/qat --qat --set model.init=runs/exp1/best.pt
    personseg export runs/qat/best.pt -o qat.onnx --int8 --calib ../shared/data/portraits

Route: eager-mode fake quantization (`torch.ao.quantization.prepare_qat`) during training, then the
fine-tuned *float* weights are exported and quantized by ONNX Runtime's static QDQ quantizer, the
existing `personseg export --int8` path ("QAT weights + ORT int8"). Why not torch's own int8
conversion: this torch (2.13) no longer ships the pt2e flow (`torch.ao.quantization.quantize_pt2e`
moved to the separate torchao package), eager `convert` produces quantized modules that do not export
to ONNX, and FX cannot trace the models' pad-to-stride `if`. Eager fake quantization traces nothing.

What is simulated, matching ORT's scheme: Conv2d+BatchNorm(+ReLU) fused so weights are rounded after
BN folding (as ORT folds BN before quantizing), per-channel symmetric int8 weights, per-tensor uint8
activations at the model input and after every conv, BN and activation module. Not simulated: the
transposed convs' weights (torch has no QAT ConvTranspose+BN), and the outputs of functional ops
(residual add, concat, SE gating); ORT quantizes those too, with MinMax calibration.

`QATModel.state_dict()` is the float model's, BatchNorm unfused and without observer state, so a QAT
run's checkpoints are ordinary float checkpoints: `load_checkpoint`, `personseg export` and `--resume`
work unchanged (a resumed run re-measures activation ranges from scratch).
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
    disable_observer,
    enable_observer,
    fuse_modules_qat,
    prepare_qat,
)

# ORT `quantize_static(activation_type=QUInt8, weight_type=QInt8, per_channel=True)`: uint8 asymmetric
# activations, int8 symmetric per-output-channel weights (ORT keeps them in [-127, 127])
QCONFIG = QConfig(
    activation=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                      dtype=torch.quint8, qscheme=torch.per_tensor_affine),
    weight=FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                                  dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0),
)
FAKE_QUANT_KEYS = ("weight_fake_quant", "activation_post_process", "input_quant")  # observer state, not weights


def fusable_groups(model: nn.Module) -> list[list[str]]:
    """[[conv, bn], [conv, bn, relu], ...]: every Conv2d directly followed by a BatchNorm2d (and a plain
    ReLU) inside an nn.Sequential, as ConvBNAct and the inverted residual's projection are built."""
    groups = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (conv_name, conv) in enumerate(children[:-1]):
            if type(conv) is nn.Conv2d and type(children[i + 1][1]) is nn.BatchNorm2d:
                group = [conv_name, children[i + 1][0]]
                if i + 2 < len(children) and type(children[i + 2][1]) is nn.ReLU:
                    group.append(children[i + 2][0])
                groups.append([f"{name}.{n}" if name else n for n in group])
    return groups


class QATModel(nn.Module):
    """A float model with fake quantization: (B, 3, H, W) -> whatever the wrapped model returns.
    Same parameters in the same order as the float model (an optimizer's state carries over); its
    state_dict is the float model's (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        net = copy.deepcopy(model).train()
        groups = fusable_groups(net)
        net.qconfig = QCONFIG
        with warnings.catch_warnings():  # "torch.ao.quantization is deprecated": see the module docstring
            warnings.simplefilter("ignore", DeprecationWarning)
            fuse_modules_qat(net, groups, inplace=True)
            self.net = prepare_qat(net, inplace=True)
        self.input_quant = QCONFIG.activation()
        # fused "a.0.bn.*" holds what the float model calls "a.1.*"
        self.renames = {f"{conv}.bn.": f"{bn}." for conv, bn, *_ in groups}

    def forward(self, x: torch.Tensor, *args):  # *args: a recurrent model's state
        return self.net(self.input_quant(x), *args)

    def train(self, mode: bool = True) -> QATModel:
        """Activation ranges are measured in training only: evaluation data does not move them."""
        super().train(mode)
        self.apply(enable_observer if mode else disable_observer)
        return self

    def state_dict(self, *args, **kwargs) -> dict:
        """The float model's state_dict: BatchNorm under its own name, no fake-quant state."""
        out = {}
        for key, value in self.net.state_dict(*args, **kwargs).items():
            if any(part in FAKE_QUANT_KEYS for part in key.split(".")):
                continue
            for fused, plain in self.renames.items():
                if key.startswith(fused):
                    key = plain + key[len(fused):]
                    break
            out[key] = value
        return out

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load a float model's state_dict (observers keep their current state)."""
        inverse = {plain: fused for fused, plain in self.renames.items()}
        fused_state = {}
        for key, value in state_dict.items():
            for plain, fused in inverse.items():
                if key.startswith(plain):
                    key = fused + key[len(plain):]
                    break
            fused_state[key] = value
        result = self.net.load_state_dict(fused_state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not any(p in FAKE_QUANT_KEYS for p in k.split("."))]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"QATModel.load_state_dict: missing keys {missing}, "
                               f"unexpected keys {result.unexpected_keys}")
        return result
