"""Parameters, FLOPs and CPU latency of the registered architectures at 320x180.

Every registered architecture is listed (the recurrent ones for one frame with a zero state).
FLOPs are counted by torch.utils.flop_counter (convolutions and matmuls), where one multiply-add is
TWO FLOPs; GMACs = GFLOPs / 2. Latency: eager PyTorch, channels_last, batch 1, median of --runs,
with the thread count printed. Ratios are against unet_mobilenet_v2 measured in the same run.

    python benchmarks/model_zoo.py [--threads 2] [--runs 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from personseg.models import create_model

CONFIGS = [
    ("unet_mobilenet_v1", {"alpha": 1.0}),
    ("unet_mobilenet_v2", {"alpha": 1.0}),
    ("unet_mobilenet_v3", {"alpha": 0.3}),
    ("unet_mobilenet_v3", {"alpha": 1.0}),
    ("deeplabv3plus", {}),
    ("hybrid_mobilenet_v2", {}),
    ("unet", {}),
    ("recurrent_unet_mobilenet_v2", {"alpha": 1.0}),
    ("recurrent_unet_mobilenet_v3", {"alpha": 0.3}),
]


def measure(name: str, kwargs: dict, size: tuple[int, int], runs: int) -> dict:
    model = create_model(name, **kwargs).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, size[1], size[0]).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - start)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": counter.get_total_flops() / 1e9, "ms": statistics.median(times) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [(name, kwargs, measure(name, kwargs, (args.width, args.height), args.runs)) for name, kwargs in CONFIGS]
    base = next(r for n, k, r in rows if n == "unet_mobilenet_v2")["ms"]
    print(f"input {args.width}x{args.height}, batch 1, {args.threads} threads, torch {torch.__version__}")
    print(f"| model | kwargs | params (M) | GFLOPs (2/MAC) | GMACs | ms/frame | x v2 time |")
    print("|---|---|---|---|---|---|---|")
    for name, kwargs, r in rows:
        print(f"| {name} | {kwargs or ''} | {r['params_m']:.2f} | {r['gflops']:.2f} | {r['gflops'] / 2:.2f} "
              f"| {r['ms']:.1f} | {r['ms'] / base:.2f} |")


if __name__ == "__main__":
    main()
