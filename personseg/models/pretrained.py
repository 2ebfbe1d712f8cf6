"""Initialise an encoder from ImageNet weights on disk (never downloaded at run time).

Supported files (see ../shared/pretrained/README.md):
- torchvision-layout MobileNetV2 (`features.N...`), with BatchNorm or with BN folded into conv biases;
- the RetinaFace MobileNetV1-0.25 backbone (`module.stage1/2/3...`).
Folded BN: the conv weight is loaded as is and its bias goes into the following BatchNorm, set to
identity otherwise (weight 1, running mean 0, running var 1 - eps), so the block computes exactly the
pretrained function at first and can still train its BN.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

_V1_STAGE_OFFSET = {"stage1": 0, "stage2": 6, "stage3": 12}
_V1_INNER = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1"}  # RetinaFace conv_dw -> DepthwiseSeparable


def _map_v1(key: str) -> str | None:
    m = re.match(r"(stage\d)\.(\d+)\.(\d+)\.(.+)", key)
    if not m:
        return None
    stage, block, inner, rest = m.groups()
    index = _V1_STAGE_OFFSET[stage] + int(block)
    if index == 0:  # the stem is a plain ConvBNAct: conv 0, bn 1
        return f"features.0.{inner}.{rest}"
    return f"features.{index}.{_V1_INNER[inner]}.{rest}" if inner in _V1_INNER else None


def _map_v2(key: str) -> str | None:
    return key if key.startswith("features.") else None


_MAPPERS = {"mobilenet_v1": _map_v1, "mobilenet_v2": _map_v2}


def _next_batchnorm(key: str) -> str:
    """`features.3.conv.2` -> `features.3.conv.3`: the BN follows its conv in every Sequential here."""
    head, last = key.rsplit(".", 1)
    return f"{head}.{int(last) + 1}"


def load_encoder_weights(encoder: nn.Module, family: str, alpha: float, path: str | Path) -> int:
    """Copy pretrained tensors into `encoder`; returns how many tensors were loaded."""
    if family not in _MAPPERS:
        raise ValueError(f"no pretrained-weight mapping for encoder {family!r}; supported: {sorted(_MAPPERS)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: cannot read encoder weights ({e}); pass a torch state-dict file") from e
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = encoder.state_dict()
    updates: dict[str, torch.Tensor] = {}
    for their_key, tensor in state.items():
        key = _MAPPERS[family](their_key)
        if key is None or key.rsplit(".", 1)[0] + ".weight" not in ours:
            continue  # classifier, or layers this encoder does not have
        module_key, param = key.rsplit(".", 1)
        if param == "bias" and key not in ours:  # folded BatchNorm: bias moves into the next BN
            bn = _next_batchnorm(module_key)
            updates[f"{bn}.bias"] = tensor
            updates[f"{bn}.weight"] = torch.ones_like(tensor)
            updates[f"{bn}.running_mean"] = torch.zeros_like(tensor)
            updates[f"{bn}.running_var"] = torch.full_like(tensor, 1 - 1e-5)
            continue
        updates[key] = tensor
    for key, tensor in updates.items():
        if key not in ours:
            raise ValueError(f"{path}: unexpected tensor {key} for {family}")
        if ours[key].shape != tensor.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(tensor.shape)} but the {family} encoder at alpha={alpha} "
                f"expects {tuple(ours[key].shape)}; use the alpha the weights were trained with")
    if not updates:
        raise ValueError(f"{path}: no tensor matched the {family} encoder; is this the right file?")
    encoder.load_state_dict(updates, strict=False)
    return len(updates)
