"""Self-describing checkpoints: everything needed to rebuild a predictor, in plain tensors and
Python primitives so they load with `torch.load(..., weights_only=True)` (a model file never runs code)."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import nn

from personseg.models import create_model

FORMAT = "personseg-checkpoint"
VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A file that is missing, unreadable, or not a personseg checkpoint."""


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: nn.Module, *, arch: str, model_kwargs: dict,
                    input_size: tuple[int, int] = (320, 180), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    threshold: float = 0.5, meta: dict | None = None, extra: dict | None = None,
                    half: bool = False) -> None:
    """Write `model` with its description. `input_size` is (width, height): the pixel budget the
    predictor resizes to. `meta` holds training metadata (config, metrics); `extra` training state
    (optimizer, scheduler, RNG) for resuming. `half=True` stores float weights as fp16."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    kwargs = {k: v for k, v in model_kwargs.items() if k != "encoder_weights"}  # weights are in the file
    ckpt = {
        "format": FORMAT, "version": VERSION,
        "arch": arch, "model_kwargs": kwargs,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "threshold": float(threshold),
        "meta": meta or {},
        "state_dict": state,
    }
    if extra:
        ckpt["extra"] = extra
    atomic_torch_save(ckpt, path)


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and validate the checkpoint dict (no model built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file; pass a .pt checkpoint written by personseg")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, it holds Python objects beyond tensors and plain data "
                              f"(only weights_only checkpoints load): {str(e).splitlines()[0]}") from e
    except Exception as e:  # torch.load raises many types on garbage bytes
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a personseg checkpoint (missing format tag); "
                              "train one with `personseg train` or save it with personseg.checkpoint.save_checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer personseg (format {ckpt['version']}); upgrade personseg")
    return ckpt


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model (float32, eval mode) and return it with the checkpoint's description."""
    ckpt = read_checkpoint(path, map_location)
    try:
        model = create_model(ckpt["arch"], **ckpt["model_kwargs"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
        model.load_state_dict(state)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']}{ckpt['model_kwargs']}: "
                              f"{str(e).splitlines()[0]}") from e
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.eval(), info
