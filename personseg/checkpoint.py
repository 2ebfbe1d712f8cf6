"""Self-describing checkpoints: everything needed to rebuild a predictor, in plain tensors and
Python primitives so they load with `torch.load(..., weights_only=True)` (a model file never runs code)."""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from personseg.models import create_model, list_models
from personseg.tempfiles import atomic_write

FORMAT = "personseg-checkpoint"
VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A file that is missing, unreadable, or not a personseg checkpoint."""


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename over `path`. The file gets the usual
    permissions from the umask, like every other output (a plain open, not mkstemp's 0600): checkpoints
    hold weights and training settings, nothing secret. Temps left by a killed save are removed here."""
    with atomic_write(path) as tmp, open(tmp, "xb") as f:
        torch.save(obj, f)


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
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; pass a .pt written by personseg")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = _plain(e)
        found = re.search(r"Unsupported global: GLOBAL \S+", text)
        if found:  # a pickle that would run code or build Python objects ("Unsupported operand": garbage)
            raise CheckpointError(f"{path}: refused, it holds Python objects beyond tensors and plain data "
                                  f"({found.group(0)}); only weights-only "
                                  "checkpoints load, re-save it with personseg.checkpoint.save_checkpoint") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a .pt file: "
                              f"{_first_line(text)})") from None
    except Exception as e:  # torch.load raises many types on garbage bytes
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a .pt file: "
                              f"{_first_line(_plain(e))})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a personseg checkpoint (missing format tag); "
                              "train one with `personseg train` or save it with personseg.checkpoint.save_checkpoint")
    if not isinstance(ckpt.get("version", 0), int) or ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer personseg (format {ckpt['version']}); upgrade personseg")
    _check_fields(path, ckpt)
    return ckpt


def _plain(error: BaseException) -> str:
    """An exception's text without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no details"


def _check_fields(path: Path, ckpt: dict) -> None:
    """The description must be what save_checkpoint writes, before anything is built from it."""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: {field} {why}; the file is damaged or not written by personseg "
                               "(re-save it with personseg.checkpoint.save_checkpoint)")

    if not isinstance(ckpt.get("arch"), str):
        raise bad("arch", "is missing")
    if ckpt["arch"] not in list_models():
        raise bad("arch", f"{ckpt['arch']!r} is not a known model (known: {', '.join(list_models())})")
    kwargs = ckpt.get("model_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise bad("model_kwargs", "is not a dict of named settings")
    if "encoder_weights" in kwargs:  # a path the model would read at build time; weights are in the file
        raise bad("model_kwargs", "names an encoder_weights file (a checkpoint carries its own weights)")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise bad("state_dict", "is not a dict of named tensors")
    size = ckpt.get("input_size", [320, 180])
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and 16 <= v <= 16384 for v in size)):
        raise bad("input_size", f"{size!r} is not [width, height] in pixels (16 to 16384)")
    for name in ("mean", "std"):
        values = ckpt.get(name, IMAGENET_MEAN if name == "mean" else IMAGENET_STD)
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
                or (name == "std" and not all(v > 0 for v in values))):
            raise bad(name, f"{values!r} is not 3 finite numbers (one per RGB channel{', above 0' if name == 'std' else ''})")
    threshold = ckpt.get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:  # NaN fails the comparison
        raise bad("threshold", f"{threshold!r} is not a probability between 0 and 1")


def check_weights_fit(path: str | Path, arch: str, kwargs: dict, state: dict) -> None:
    """Build the model on the meta device (no memory) and compare its tensor names and shapes with the
    file's, so settings such as width=4096 in a small file are refused before anything is allocated."""
    try:
        with torch.device("meta"):
            skeleton = create_model(arch, **kwargs)
    except (ValueError, TypeError, KeyError, AssertionError, RuntimeError) as e:
        raise CheckpointError(f"{path}: model_kwargs {kwargs} do not build {arch}: {_first_line(str(e))}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(expected.keys() - found.keys())[:3]
        unexpected = sorted(found.keys() - expected.keys())[:3]
        shape = next((f"{k}: {found[k]} in the file, {expected[k]} for the settings" for k in expected
                      if k in found and expected[k] != found[k]), "")
        detail = "; ".join(filter(None, [f"missing {missing}" if missing else "",
                                          f"unexpected {unexpected}" if unexpected else "", shape]))
        raise CheckpointError(f"{path}: weights do not fit {arch}{kwargs} ({detail}); the settings or the "
                              "weights were changed, re-save it with personseg.checkpoint.save_checkpoint")


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model (float32, eval mode) and return it with the checkpoint's description."""
    ckpt = read_checkpoint(path, map_location)
    check_weights_fit(path, ckpt["arch"], ckpt.get("model_kwargs", {}), ckpt["state_dict"])
    try:
        model = create_model(ckpt["arch"], **ckpt.get("model_kwargs", {}))
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
        model.load_state_dict(state)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']}{ckpt['model_kwargs']}: "
                              f"{str(e).splitlines()[0]}") from e
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.eval(), info
