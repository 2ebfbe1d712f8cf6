"""ONNX Runtime sessions of personseg's ONNX files: the inference backend of `Predictor` (no torch).

    seg = personseg.load("model.onnx")  # or --model model.onnx; fp32 or int8 files from `personseg export`

The preprocessing contract (arch, model_kwargs, input_size, mean, std, threshold, tta) travels in the
ONNX file's metadata_props, written by `personseg.export.onnx_metadata`; `OnnxModel.info` reads it back
in the shape of a checkpoint's description.

Threads: `intra_op_num_threads` defaults to `default_threads()`, the CPU cores this process may use
(at most 4: these models gain nothing beyond), one inter-op thread; spinning is off when the caller
shares the CPU with other busy threads (video: decoder, guided filter and x264 encoder), where ORT's
spin-waiting workers took the cores the others needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMAT = "personseg-onnx"  # metadata_props["format"] of every file `personseg export` writes
JSON_KEYS = ("model_kwargs", "input_size", "mean", "std", "state", "tta_measured", "card")  # JSON values
MAX_THREADS = 4


class ModelFileError(ValueError):
    """An ONNX file that is missing, unreadable, or not a personseg model."""


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelFileError("ONNX models need onnxruntime: pip install personseg (it is a base dependency)") from e
    return onnxruntime


def default_threads() -> int:
    """The cores this process may run on (affinity, else os.cpu_count()), at most MAX_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def providers_for(device: str | None) -> list[str]:
    """ONNX Runtime execution providers: CUDA first when asked for (or "auto") and available."""
    ort = import_onnxruntime()
    wanted = str(device or "auto")
    if wanted.startswith("cuda") or wanted == "auto":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if wanted.startswith("cuda"):
            raise ValueError("device 'cuda' requested but this onnxruntime has no CUDA provider; "
                             "use --device cpu or install onnxruntime-gpu")
    return ["CPUExecutionProvider"]


def session_options(threads: int | None, spinning: bool):
    """ONNX Runtime options of every personseg session (models and refiners): `threads` intra-op threads
    (None: `default_threads()`), one inter-op thread, spin-waiting as asked, all graph optimisations."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def read_metadata(props: dict[str, str], path: str | Path) -> dict:
    """metadata_props (all strings) -> a checkpoint-like description dict."""
    if props.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a personseg ONNX model (no personseg metadata); "
                             "write one with `personseg export CHECKPOINT -o model.onnx`")
    fix = "re-export it with `personseg export CHECKPOINT -o model.onnx`"
    missing = [k for k in ("arch", "input_size", "mean", "std", "threshold") if k not in props]
    if missing:
        raise ModelFileError(f"{path}: personseg metadata without {', '.join(missing)}; {fix}")
    try:
        info = {k: (json.loads(v) if k in JSON_KEYS else v) for k, v in props.items()}
        info["threshold"] = float(info["threshold"])
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ModelFileError(f"{path}: unreadable personseg metadata ({e}); {fix}") from None
    if not 0 <= info["threshold"] <= 1 or len(info["mean"]) != 3 or len(info["std"]) != 3 \
            or len(info["input_size"]) != 2 or min(info["input_size"]) < 16:
        raise ModelFileError(f"{path}: personseg metadata out of range (threshold {info['threshold']}, mean "
                             f"{info['mean']}, std {info['std']}, input_size {info['input_size']}); {fix}")
    info["tta"] = info.get("tta") == "1"  # files from before it was recorded: off
    if "pad_multiple" in info:
        info["pad_multiple"] = int(info["pad_multiple"])
    if "card" in info:
        info.setdefault("meta", {})["card"] = info["card"]
    return info


class OnnxModel:
    """(B, 3, H, W) float32 numpy -> (B, 1, H, W) float32 logits, via an `onnxruntime.InferenceSession`.
    Recurrent models: `model(x, state=None) -> (logits, state)`, state None meaning zeros.

    Given a torch tensor instead (export's parity checks), it answers with torch tensors on the
    input's device."""

    def __init__(self, path: str | Path, device: str | None = "cpu", threads: int | None = None,
                 spinning: bool = True):
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file; write one with `personseg export`")
        self.threads = threads or default_threads()
        options = session_options(self.threads, spinning)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        except Exception as e:  # onnxruntime raises its own pybind error types on bad files
            raise ModelFileError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from e
        self.info = read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.info["path"] = str(path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.state_layout = self.info.get("state")  # recurrent models: [[channels, stride], ...]
        self.recurrent = self.state_layout is not None
        self.providers = self.session.get_providers()

    def __call__(self, x, state=None):
        if not isinstance(x, np.ndarray):  # a torch tensor
            return self._call_torch(x, state)
        feeds = {self.input_names[0]: np.ascontiguousarray(x, np.float32)}
        if self.recurrent:
            state = self.initial_state(x.shape[0], *x.shape[2:]) if state is None else state
            feeds.update({name: np.ascontiguousarray(s, np.float32) for name, s in zip(self.input_names[1:], state)})
        outputs = self.session.run(self.output_names, feeds)
        if self.recurrent:
            return outputs[0], outputs[1:]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]  # multi-task: logits, parts, heatmaps

    def _call_torch(self, x, state):
        import torch

        # The copy is numpy's, single-threaded: a torch copy wakes torch's thread pool, whose spinning
        # threads then slowed ONNX Runtime's own (export's parity checks run on that path).
        def to_numpy(t):
            t = t if isinstance(t, np.ndarray) else t.detach().to("cpu", torch.float32).numpy()
            return np.ascontiguousarray(t, np.float32)

        out = self(to_numpy(x), None if state is None else [to_numpy(s) for s in state])
        back = lambda a: torch.from_numpy(np.asarray(a)).to(x.device)  # noqa: E731
        if self.recurrent:
            return back(out[0]), [back(s) for s in out[1]]
        return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)

    def initial_state(self, batch: int, height: int, width: int) -> list[np.ndarray]:
        """Zeros for a recurrent model's first frame: its state lives on the input padded to `pad_multiple`."""
        m = self.info["pad_multiple"]
        hp, wp = -(-height // m) * m, -(-width // m) * m
        return [np.zeros((batch, c, hp // s, wp // s), np.float32) for c, s in self.state_layout]
