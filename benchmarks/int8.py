"""fp32 vs post-training int8 (PTQ) vs quantization-aware int8 (QAT): accuracy and speed, one table.

    python benchmarks/int8.py --float personseg/weights/fast.pt --qat runs/fast_qat/best.pt

For each checkpoint (the float model; the QAT fine-tune of it, `personseg train ... --qat`): export to
ONNX (fp32), quantize with ONNX Runtime's static QDQ quantizer calibrated on --calib-count images of the
training split of every data folder (`personseg export --int8`'s path), then score with the full
predictor (guided-filter refinement, source resolution) on the validation split of portraits/, ccp/
and hsd/: pooled IoU per folder and over all three. Speed: ONNX Runtime, batch 1, median of --runs at
the model's own input size and at 320x180 (best of three rounds), thread count printed. Rows:
  torch fp32     the float checkpoint, eager PyTorch (the reference)
  ort fp32       its ONNX export
  ort PTQ int8   the float model quantized after training
  ort QAT int8   the QAT fine-tune, quantized the same way
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import personseg
from personseg.bench import time_runs
from personseg.evaluate import evaluate_folders
from personseg.export import calibration_images, calibration_inputs, export_onnx, quantize_int8
from personseg.predict import InputSpec, Predictor

FOLDERS = ("portraits", "ccp", "hsd")


def score(predictor, data: Path, limit: int | None = None) -> dict:
    result = evaluate_folders(predictor, [data / f for f in FOLDERS], split="val", limit=limit)
    return {**{name: m["iou"] for name, m in result["per_folder"].items()}, "pooled": result["overall"]["iou"]}


def latency_ms(model, size: tuple[int, int], runs: int) -> float:
    x = torch.randn(1, 3, size[1], size[0]).contiguous(memory_format=torch.channels_last)
    time.sleep(0.5)  # let the other backend's idle threads stop spinning first
    with torch.inference_mode():
        return statistics.median(time_runs(lambda: model(x), runs, warmup=3)) * 1e3


def onnx_pair(checkpoint: str, fp32: Path, calib: list[Path]) -> tuple[Path, Path]:
    """Export `checkpoint` to `fp32` and quantize it beside; returns (fp32.onnx, fp32.int8.onnx)."""
    predictor = personseg.load(checkpoint, refine=False)
    info = predictor.info
    export_onnx(predictor.model, info, fp32)
    int8 = fp32.with_suffix(".int8.onnx")
    quantize_int8(fp32, int8, list(calibration_inputs(calib, InputSpec.from_info(info))))
    return fp32, int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float", required=True, help="the float checkpoint (path or shipped name)")
    parser.add_argument("--qat", help="its quantization-aware fine-tune (a checkpoint from `train --qat`)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--calib-count", type=int, default=64, help="calibration images per folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--limit", type=int, help="validation images per folder (default: all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calib = [p for f in FOLDERS for p in calibration_images(args.data / f, args.calib_count)]
    with tempfile.TemporaryDirectory() as tmp:
        predictors = {"torch fp32": personseg.load(args.float)}
        own = tuple(predictors["torch fp32"].input_size)
        fp32, int8 = onnx_pair(args.float, Path(tmp) / "float.onnx", calib)
        predictors["ort fp32"] = Predictor.from_onnx(fp32, threads=args.threads)
        predictors["ort PTQ int8"] = Predictor.from_onnx(int8, threads=args.threads)
        if args.qat:
            _, qat8 = onnx_pair(args.qat, Path(tmp) / "qat.onnx", calib)
            predictors["ort QAT int8"] = Predictor.from_onnx(qat8, threads=args.threads)
        # latency before any evaluation, in alternating rounds (best median of 3), with a pause before each:
        # measured right after torch work (its threads still spinning) the ORT figures came out 2x slower
        speed = {label: [] for label in predictors}
        for _ in range(3):
            for label, p in predictors.items():
                speed[label].append((latency_ms(p.model, own, args.runs), latency_ms(p.model, (320, 180), args.runs)))
        results = {label: {"iou": score(p, args.data, args.limit), "ms_own": min(s[0] for s in speed[label]),
                           "ms_320x180": min(s[1] for s in speed[label])} for label, p in predictors.items()}
    base = results["torch fp32"]
    print(f"\n{args.float}{' + QAT ' + args.qat if args.qat else ''}; validation split, full predictor; "
          f"latency batch 1, {args.threads} threads, median of {args.runs}; own size {own[0]}x{own[1]}")
    print("| model | " + " | ".join(f"{f} IoU" for f in FOLDERS) + " | pooled IoU | vs fp32 "
          f"| ms at {own[0]}x{own[1]} | ms at 320x180 |")
    print("|---" * (len(FOLDERS) + 5) + "|")
    for label, r in results.items():
        ious = " | ".join(f"{r['iou'][f]:.4f}" for f in FOLDERS)
        print(f"| {label} | {ious} | {r['iou']['pooled']:.4f} | {r['iou']['pooled'] - base['iou']['pooled']:+.4f} "
              f"| {r['ms_own']:.2f} | {r['ms_320x180']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
