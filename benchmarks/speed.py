"""The README speed table: every backend against eager PyTorch fp32 of the same model, size and batch,
measured in the same run (ratios > 1 are faster than eager). Numbers come from `personseg.bench`.

    python benchmarks/speed.py [MODEL...] [--threads 2] [--runs 20] [--sizes 320x180,native] [--batch 1,16]
    python benchmarks/speed.py unet_mobilenet_v3:alpha=0.3 --runs 3 --batch 1 --sizes 320x180   # a quick check

MODELs are as for `personseg bench` (checkpoints, shipped names, NAME:key=value with random weights);
the default is the shipped models, else the model zoo's architectures with random weights. Run it on
an otherwise idle machine: a busy CPU makes every ratio noise. --json keeps all numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from personseg.bench import BACKENDS, DEFAULT_BATCHES, DEFAULT_SIZES, benchmark, markdown_table
from personseg.predict import WEIGHTS_DIR

ZOO = ["unet_mobilenet_v1:alpha=1.0", "unet_mobilenet_v2:alpha=1.0", "unet_mobilenet_v3:alpha=0.3",
       "unet_mobilenet_v3:alpha=1.0", "deeplabv3plus", "unet"]
BASELINE = "torch"


def default_models() -> list[str]:
    shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))
    return shipped or ZOO


def speed_table(result: dict) -> str:
    """One row per model, size and batch: eager fp32 ms, then each backend's ms and speed-up over it."""
    backends = list(dict.fromkeys(r["backend"] for r in result["results"] if r["backend"] != BASELINE))
    params = {m["model"]: m["params"] for m in result["models"]}
    rows: dict[tuple, dict[str, dict]] = {}
    for r in result["results"]:
        rows.setdefault((r["model"], tuple(r["size"]), r["batch"]), {})[r["backend"]] = r
    env = result["env"]
    header = ["model", "params (M)", "size", "batch", "GFLOPs", "eager fp32 ms"]
    header += [f"{b} ms (x eager)" for b in backends]
    caption = (f"{env['device']} ({env['cpu']}), {env['threads']} threads, torch {env['torch']}, onnxruntime "
               f"{env.get('onnxruntime')}; median latency per batch (forward pass only); ratio = eager ms / backend "
               "ms in the same run; GFLOPs per image, 2 FLOPs per multiply-add")
    lines = [caption, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for (model, size, batch), by_backend in rows.items():
        base = by_backend.get(BASELINE)
        any_row = next(iter(by_backend.values()))
        cells = [model, f"{params[model] / 1e6:.2f}", f"{size[0]}x{size[1]}", str(batch), f"{any_row['gflops']:.2f}",
                 f"{base['median_ms']:.1f}" if base else "-"]
        for backend in backends:
            r = by_backend.get(backend)
            if r is None:
                cells.append("-")
            else:
                ratio = f" (x{base['median_ms'] / r['median_ms']:.2f})" if base else ""
                cells.append(f"{r['median_ms']:.1f}{ratio}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="default: the shipped models, else " + ", ".join(ZOO))
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--batch", default=DEFAULT_BATCHES, help="comma-separated batch sizes")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8", help="from " + ", ".join(BACKENDS))
    parser.add_argument("--threads", type=int, default=0, help="default: torch's default")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--calib", help="calibrate int8 on these images (default: random inputs)")
    parser.add_argument("--json", help="write all numbers here")
    parser.add_argument("--full", action="store_true", help="also print personseg bench's full table")
    args = parser.parse_args()

    backends = [b.strip() for b in args.backends.split(",")]
    if BASELINE not in backends:
        backends.insert(0, BASELINE)  # the ratios need it
    result = benchmark(args.models or default_models(), args.sizes, [int(b) for b in args.batch.split(",")],
                       backends, args.threads or None, args.runs, args.warmup, args.device, args.calib,
                       log=lambda message: print(message, file=sys.stderr))
    print(speed_table(result))
    if args.full:
        print("\n" + markdown_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
