"""`personseg export [MODEL] -o model.onnx [--opset N] [--int8 --calib DATA_DIR] [--check/--no-check]`

Writes the model as ONNX with dynamic batch, height and width (input `image` (B, 3, H, W), normalised
as the predictor does; output `logits` (B, 1, H, W)). The preprocessing contract travels in the
file's metadata_props, so `personseg.load("model.onnx")` and `--model model.onnx` work exactly like
the checkpoint, on ONNX Runtime.

Exporter: the TorchScript tracer by default (under a second; the torch.export-based `--exporter
dynamo` gives the same graph, needs onnxscript, and takes ~25 s on a busy CPU). The tracer records
Python branches as taken, so it traces at 97x131, a size no stride divides, to keep the model's
"pad to the stride" step in the graph; the parity check at a second size confirms it.

Checks (`--no-check` skips them): onnx.checker, then ONNX Runtime against eager PyTorch on random
inputs at 180x320 (batch 1) and 97x131 (batch 2), printing the max abs logit difference; above
--tolerance (1e-3) the command exits 1 and writes nothing.

`--int8` also writes `NAME.int8.onnx`: post-training static quantization by ONNX Runtime (QDQ format,
uint8 activations, int8 per-channel weights, MinMax ranges), calibrated on `--calib-count` images of
the training split of `--calib` (a data folder with images/, a folder of images, or a data root of
such folders), preprocessed exactly as the predictor does.

    personseg export runs/exp1/best.pt -o exp1.onnx --int8 --calib ../shared/data/portraits
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from personseg.cli import positive_int
from personseg.models import is_recurrent
from personseg.predict import PRESENCE_KEY, InputSpec
from personseg.tempfiles import atomic_write

DEFAULT_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
TRACE_SIZE = (97, 131)  # (h, w): divisible by no model stride, so the traced graph keeps the padding branch
CHECK_SIZES = ((1, 180, 320), (2, 97, 131))  # (batch, h, w) of the parity check
TOLERANCE = 1e-3  # max abs logit difference, fp32
INPUT_NAME, OUTPUT_NAME = "image", "logits"
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


class ParityError(ValueError):
    """ONNX Runtime and eager PyTorch disagree beyond the tolerance."""


# ---------------------------------------------------------------------------------------------------------
# fp32 export


def onnx_metadata(info: dict, model: nn.Module | None = None) -> dict[str, str]:
    """The preprocessing contract as ONNX metadata_props (strings; lists and dicts as JSON); for a
    recurrent `model` also its state layout (channels and stride of each state tensor)."""
    import personseg
    from personseg.onnx_backend import FORMAT

    props = {
        "format": FORMAT,
        "arch": str(info["arch"]),
        "model_kwargs": json.dumps(info.get("model_kwargs", {}), sort_keys=True),
        "input_size": json.dumps([int(v) for v in info["input_size"]]),  # (width, height) pixel budget
        "mean": json.dumps([float(v) for v in info["mean"]]),  # of 0-1 RGB; the model input is (x - mean) / std
        "std": json.dumps([float(v) for v in info["std"]]),
        "threshold": repr(float(info["threshold"])),
        "tta": "1" if info.get("meta", {}).get("tta") else "0",  # the predictor's mirror averaging, as shipped
        "precision": "fp32",  # quantize_int8 rewrites it
        "personseg_version": personseg.__version__,
    }
    if len(heads_of(model)) > 1:
        props["outputs"] = json.dumps(list(heads_of(model)))  # logits, then parts, heatmaps or presence
    if PRESENCE_KEY in info.get("meta", {}):  # the PresenceHead's cut
        props[PRESENCE_KEY] = repr(float(info["meta"][PRESENCE_KEY]))
    if is_recurrent(model):
        probe = model.stride * 8
        shapes = model.state_shapes(1, probe, probe)
        props["state"] = json.dumps([[c, probe // h] for _, c, h, _ in shapes])
        props["pad_multiple"] = str(model.stride)
    return props


def heads_of(model: nn.Module | None) -> tuple[str, ...]:
    """The output names of a (non-recurrent) model: its `outputs` ("logits" first), else ("logits",)."""
    return tuple(getattr(model, "outputs", (OUTPUT_NAME,)))


def set_metadata(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(model: nn.Module, info: dict, path: str | Path, *, opset: int = DEFAULT_OPSET,
                exporter: str = "torchscript", check: bool = True, check_sizes=CHECK_SIZES,
                tolerance: float = TOLERANCE) -> dict:
    """Export `model` (described by a checkpoint's `info`: arch, model_kwargs, input_size, mean, std,
    threshold) to `path`. With `check`: onnx.checker and ONNX Runtime parity at `check_sizes`
    ((batch, h, w) tuples); raises ParityError above `tolerance`, and then `path` is not written.
    Returns {"path", "opset", "exporter", "metadata", "max_abs_diff": {"BxCxHxW": float}, "bytes"}."""
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().eval().to("cpu", memory_format=torch.contiguous_format)
    metadata = onnx_metadata(info, model=model)
    with atomic_write(path) as tmp:
        _run_exporter(model, tmp, opset, exporter)
        proto = onnx.load(str(tmp))
        _name_dynamic_axes(proto)
        set_metadata(proto, metadata)
        if check:
            onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        diffs = check_parity(model, tmp, check_sizes) if check else {}
        worst = max(diffs.values(), default=0.0)
        if not worst <= tolerance:  # NaN fails too
            raise ParityError(f"ONNX Runtime differs from PyTorch by {worst:.3g} (max abs logit, tolerance "
                              f"{tolerance:g}) at {_format_diffs(diffs)}; try another --opset or --exporter")
    return {"path": str(path), "opset": opset, "exporter": exporter, "metadata": metadata,
            "max_abs_diff": diffs, "bytes": path.stat().st_size}


def _run_exporter(model: nn.Module, path: Path, opset: int, exporter: str) -> None:
    """Inputs `image` (+ `state0..3` for recurrent models, zeros on the first frame), outputs `logits`
    (+ `new_state0..3`); batch and spatial axes dynamic."""
    example = torch.randn(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0))
    args, inputs, outputs = (example,), [INPUT_NAME], list(heads_of(model))
    axes = {INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES}
    for name in outputs[1:]:  # multi-task heads (heatmaps are at their own stride); presence: one logit
        axes[name] = {0: "batch"} if name == "presence" else {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    if is_recurrent(model):
        state = [torch.zeros(shape) for shape in model.state_shapes(1, *TRACE_SIZE)]
        args = (example, state)
        inputs += [f"state{i}" for i in range(len(state))]
        outputs += [f"new_state{i}" for i in range(len(state))]
        for i in range(len(state)):
            axes[f"state{i}"] = axes[f"new_state{i}"] = {0: "batch", 2: f"state{i}_height", 3: f"state{i}_width"}
    names = {"input_names": inputs, "output_names": outputs, "opset_version": opset}
    with warnings.catch_warnings():
        if exporter == "dynamo":
            auto = torch.export.Dim.AUTO
            spatial = {0: auto, 2: auto, 3: auto}
            dynamic = (spatial, [spatial] * (len(args[1]))) if len(args) > 1 else (spatial,)
            torch.onnx.export(model, args, str(path), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=dynamic, **names)
        else:
            # the tracer warns about the padding `if`; TRACE_SIZE takes it, and the parity check confirms
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is "legacy"
            torch.onnx.export(model, args, str(path), dynamo=False, do_constant_folding=True,
                              dynamic_axes=axes, **names)


def _name_dynamic_axes(proto) -> None:
    """batch/height/width on the graph's image input and logits output (dynamo writes s0, s77, ...)."""
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        for axis, name in DYNAMIC_AXES.items():
            if not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = name


def check_parity(model: nn.Module, onnx_path: str | Path, sizes=CHECK_SIZES, seed: int = 0) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and eager PyTorch outputs on random normal inputs,
    keyed "BxCxHxW". Recurrent models run two frames (zero state, then the state the first returned)
    and every output counts, logits and state."""
    from personseg.onnx_backend import OnnxModel

    session = OnnxModel(onnx_path)
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for batch, h, w in sizes:
        x = torch.randn(batch, 3, h, w, generator=generator)
        with torch.inference_mode():
            if is_recurrent(model):
                first, state = model(x)
                second, next_state = model(x.flip(-1), state)
                expected = [first, *state, second, *next_state]
                got = _flat(session(x)) + _flat(session(x.flip(-1), state))  # both continue from torch's state
            elif len(heads_of(model)) > 1:  # multi-task: every head
                expected, got = list(model(x)), list(session(x))
            else:
                expected, got = [model(x)], [session(x)]
        for e, g in zip(expected, got):
            if g.shape != e.shape:
                raise ParityError(f"ONNX output {tuple(g.shape)} != PyTorch {tuple(e.shape)} at {tuple(x.shape)}")
        diffs[f"{batch}x3x{h}x{w}"] = max(float((g - e).abs().max()) for e, g in zip(expected, got))
    return diffs


def _flat(output) -> list[torch.Tensor]:
    logits, state = output
    return [logits, *state]


def _format_diffs(diffs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())


# ---------------------------------------------------------------------------------------------------------
# int8


def calibration_images(data_dir: str | Path, count: int = 64) -> list[Path]:
    """`count` images spread evenly over the training split (`personseg.folders`' rule) of `data_dir`:
    a data folder (images/ inside), a folder of images, or a data root holding data folders."""
    from personseg.folders import list_images, split_items

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass --calib a data folder with images/ inside")
    folders = [root / "images"] if (root / "images").is_dir() else [root]
    if not list_images(folders[0]):
        folders = sorted(p / "images" for p in root.iterdir() if (p / "images").is_dir())
    paths = [p for folder in folders for p in split_items(list_images(folder), "train")]
    if not paths:
        raise FileNotFoundError(f"{root}: no images to calibrate on (looked in {root}/images, {root}, "
                                f"{root}/*/images)")
    picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
    return [paths[i] for i in dict.fromkeys(picks)]


def calibration_inputs(paths: Iterable[Path], spec) -> Iterator[np.ndarray]:
    """(1, 3, h, w) float32 model inputs, preprocessed as `Predictor` does: `spec` is the model's
    `personseg.predict.InputSpec` (`InputSpec.from_info(info)`)."""
    from personseg.imageio import read_image

    for path in paths:
        yield spec.preprocess([read_image(path)])


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader interface over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds, self.position = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __len__(self) -> int:
        return len(self.feeds)


def _calibration_feeds(fp32_path: Path, inputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Feeds for the calibrator. A recurrent model sees every image twice, from a zero state and
    from the state the fp32 model left after it, so the state inputs get real ranges, not [0, 0]."""
    from personseg.onnx_backend import OnnxModel

    fp32 = OnnxModel(fp32_path)
    if fp32.state_layout is None:
        return [{fp32.input_names[0]: x} for x in inputs]
    feeds = []
    for x in inputs:
        zeros = fp32.initial_state(x.shape[0], *x.shape[2:])
        _, state = fp32(torch.from_numpy(x), zeros)
        for s in (zeros, state):
            feeds.append(dict(zip(fp32.input_names, [x] + [np.asarray(t) for t in s])))
    return feeds


def quantize_int8(fp32_path: str | Path, out_path: str | Path, inputs: list[np.ndarray],
                  calibration: str = "") -> dict:
    """Post-training static quantization of an exported fp32 file: ONNX Runtime's pre-processing
    (shape inference, graph optimisation: BatchNorm folding), then QDQ with uint8 activations and
    per-channel int8 weights, activation ranges from MinMax over `inputs` ((1, 3, h, w) float32,
    sizes may differ). The metadata is carried over with precision "int8". Returns {"path", "bytes"}."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise ValueError("int8 calibration needs at least one input")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory() as scratch, atomic_write(out_path) as tmp, _quiet_root_logger():
        pre = Path(scratch) / "preprocessed.onnx"
        # symbolic shape inference cannot follow the pad-to-stride arithmetic; ONNX's own is enough
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        reader = _Reader(_calibration_feeds(fp32_path, inputs))
        quantize_static(str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(tmp))
        set_metadata(proto, {**props, "precision": "int8", "calibration": calibration})
        onnx.save(proto, str(tmp))
    return {"path": str(out_path), "bytes": out_path.stat().st_size}


@contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice through the root logger (logging.warning); keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def compare_int8(fp32_path: str | Path, int8_path: str | Path, inputs: list[np.ndarray],
                 threshold: float = 0.5) -> dict:
    """Agreement of int8 with fp32 on `inputs`: IoU of the thresholded masks (pixels pooled; 1.0 when
    both are empty) and the max abs logit difference."""
    from personseg.onnx_backend import OnnxModel

    fp32, int8 = OnnxModel(fp32_path), OnnxModel(int8_path)
    logit = math.log(threshold / (1 - threshold))
    inter = union = 0
    worst = 0.0
    first = (lambda out: out[0]) if fp32.state_layout else (lambda out: out)  # recurrent: first-frame logits
    for x in inputs:
        a, b = first(fp32(torch.from_numpy(x))), first(int8(torch.from_numpy(x)))
        inter += int(((a > logit) & (b > logit)).sum())
        union += int(((a > logit) | (b > logit)).sum())
        worst = max(worst, float((a - b).abs().max()))
    return {"mask_iou": inter / union if union else 1.0, "max_abs_diff": worst, "images": len(inputs)}


def int8_path_for(path: str | Path) -> Path:
    """model.onnx -> model.int8.onnx"""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


# ---------------------------------------------------------------------------------------------------------
# CLI




def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("model", nargs="?", metavar="CHECKPOINT_OR_NAME",
                        help="a .pt checkpoint or a shipped model name (default: the shipped default model)")
    parser.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="torchscript (default, fast) or dynamo (torch.export based, needs onnxscript)")
    parser.add_argument("--int8", action="store_true", help="also write NAME.int8.onnx (needs --calib)")
    parser.add_argument("--calib", metavar="DATA_DIR", help="images to calibrate int8 activation ranges on")
    parser.add_argument("--calib-count", type=positive_int, default=64, help="calibration images (default: 64)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="onnx.checker and ONNX Runtime vs PyTorch parity (default: on)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"max abs logit difference allowed by the check (default: {TOLERANCE:g})")


def run(args: argparse.Namespace) -> int:
    import personseg

    def fail(message: str, code: int = 2) -> int:
        print(f"personseg export: {message}", file=sys.stderr)
        return code

    if args.int8 and not args.calib:
        return fail("--int8 needs --calib DATA_DIR: images to measure activation ranges on")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return fail(f"{e.name} is not installed: pip install 'personseg[onnx]'")
    try:
        predictor = personseg.load(args.model, refine=False, backend="torch")  # a shipped name: its .pt
    except (OSError, ValueError) as e:
        return fail(f"cannot load the model: {e}")
    if not isinstance(predictor.model, nn.Module):
        return fail(f"{args.model} is already an ONNX model; export a .pt checkpoint")
    info = predictor.info
    try:
        result = export_onnx(predictor.model, info, args.out, opset=args.opset, exporter=args.exporter,
                             check=args.check, tolerance=args.tolerance)
    except ParityError as e:
        return fail(str(e), 1)
    print(f"wrote {result['path']} ({info['arch']} {info.get('model_kwargs', {})}, opset {args.opset}, "
          f"{args.exporter} exporter, {result['bytes'] / 2**20:.1f} MiB)")
    if args.check:
        print(f"parity vs PyTorch, max abs logit difference: {_format_diffs(result['max_abs_diff'])} "
              f"(tolerance {args.tolerance:g})")
    if args.int8:
        try:
            paths = calibration_images(args.calib, args.calib_count)
            inputs = list(calibration_inputs(paths, InputSpec.from_info(info)))
        except (OSError, ValueError) as e:
            return fail(f"calibration data: {e}")
        out8 = int8_path_for(args.out)
        q = quantize_int8(args.out, out8, inputs, calibration=f"{len(inputs)} images of {args.calib}")
        print(f"wrote {out8} (int8 QDQ, per-channel weights, calibrated on {len(inputs)} images, "
              f"{q['bytes'] / 2**20:.1f} MiB)")
        if args.check:
            agree = compare_int8(args.out, out8, inputs[:8], float(info["threshold"]))
            print(f"int8 vs fp32 on {agree['images']} calibration images: mask IoU {agree['mask_iou']:.4f}, "
                  f"max abs logit difference {agree['max_abs_diff']:.3g}")
    return 0
