"""The model registry: a dict and a decorator."""
from __future__ import annotations

from typing import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn
    return decorator


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture, e.g. `create_model("unet_mobilenet_v3", alpha=0.3)`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return MODELS[name](**kwargs)


def list_models() -> list[str]:
    return sorted(MODELS)


def is_recurrent(model: nn.Module | None) -> bool:
    """Whether `model` carries state from frame to frame: `forward(frames, state) -> (logits, state)`,
    with `state_shapes(batch, height, width)` (the recurrent_* architectures; see models/recurrent.py)."""
    return callable(getattr(model, "state_shapes", None))
