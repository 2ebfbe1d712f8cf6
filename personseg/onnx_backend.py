"""ONNX Runtime behind the torch model's interface, so `Predictor` runs an exported file unchanged.

    seg = personseg.load("model.onnx")  # or --model model.onnx; fp32 or int8 files from `personseg export`

The preprocessing contract (arch, model_kwargs, input_size, mean, std, threshold) travels in the ONNX
file's metadata_props, written by `personseg.export.onnx_metadata`; `OnnxModel.info` reads it back in
the shape of a checkpoint's description.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from personseg.checkpoint import CheckpointError

FORMAT = "personseg-onnx"  # metadata_props["format"] of every file `personseg export` writes
JSON_KEYS = ("model_kwargs", "input_size", "mean", "std", "state")  # metadata values stored as JSON text


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise CheckpointError("ONNX models need onnxruntime: pip install 'personseg[onnx]'") from e
    return onnxruntime


def providers_for(device: str | torch.device | None) -> list[str]:
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


def read_metadata(props: dict[str, str], path: str | Path) -> dict:
    """metadata_props (all strings) -> a checkpoint-like description dict."""
    if props.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a personseg ONNX model (no personseg metadata); "
                              "write one with `personseg export CHECKPOINT -o model.onnx`")
    info = {k: (json.loads(v) if k in JSON_KEYS else v) for k, v in props.items()}
    info["threshold"] = float(info["threshold"])
    info["tta"] = info.get("tta") == "1"  # files from before it was recorded: off
    if "pad_multiple" in info:
        info["pad_multiple"] = int(info["pad_multiple"])
    return info


class OnnxModel:
    """(B, 3, H, W) float tensor, any memory format -> (B, 1, H, W) float32 logits, via an
    `onnxruntime.InferenceSession`; outputs come back on the input's device. Recurrent models keep
    the torch signature: `model(x, state=None) -> (logits, state)`, state None meaning zeros."""

    def __init__(self, path: str | Path, device: str | torch.device | None = "cpu", threads: int | None = None):
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such model file; write one with `personseg export`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        except Exception as e:  # onnxruntime raises its own pybind error types on bad files
            raise CheckpointError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from e
        self.info = read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.info["path"] = str(path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.state_layout = self.info.get("state")  # recurrent models: [[channels, stride], ...]
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor, state: list[torch.Tensor] | None = None):
        feeds = {self.input_names[0]: _numpy(x)}
        if self.state_layout is not None:
            state = self.initial_state(*x.shape[:1], *x.shape[2:]) if state is None else state
            feeds.update({name: _numpy(s) for name, s in zip(self.input_names[1:], state)})
        outputs = [torch.from_numpy(np.asarray(o)).to(x.device) for o in self.session.run(self.output_names, feeds)]
        return outputs[0] if self.state_layout is None else (outputs[0], outputs[1:])

    def initial_state(self, batch: int, height: int, width: int) -> list[torch.Tensor]:
        """Zeros for a recurrent model's first frame: its state lives on the input padded to `pad_multiple`."""
        m = self.info["pad_multiple"]
        hp, wp = -(-height // m) * m, -(-width // m) * m
        return [torch.zeros(batch, c, hp // s, wp // s) for c, s in self.state_layout]


def _numpy(x: torch.Tensor) -> np.ndarray:
    """NCHW-contiguous float32, as ONNX wants. The copy is numpy's, single-threaded: a torch copy wakes
    torch's thread pool, whose spinning threads then slowed ONNX Runtime's own (4.2 -> 7.0 ms a frame)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
