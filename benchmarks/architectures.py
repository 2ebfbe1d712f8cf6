"""Train every architecture the same way for the same time, then one table (issue: the default models).

    python benchmarks/architectures.py --budget 10 --out runs/compare [--only NAME ...]
    python benchmarks/architectures.py --config configs/compare_wild.yaml --budget 20 --out runs/compare_wild \
        --only hybrid_mobilenet_v2_pretrained unet_mobilenet_v2_pretrained deeplabv3plus_pretrained

Each entry trains with --config (default configs/compare.yaml: the seed recipe and the first shipped
models' data mix; configs/compare_wild.yaml: the in-the-wild mix of issue 18) for
`--budget` minutes of training time on one math thread (evaluations excluded), from random
initialisation unless it says `pretrained`, then scores the full validation split of every source
(letterboxed to 320x180, as in training, threshold 0.5). A person-free source (negatives) has no IoU: its
column is the share of its pixels called person. A finished run is reused, so the script can be resumed.
The table adds parameters, GFLOPs (one multiply-add = two FLOPs), ms per 320x180 frame measured in this
run (eager PyTorch, channels_last, batch 1, --threads; with --onnx also ONNX Runtime on each trained
model's export: the best of three alternating rounds, each after a pause, as benchmarks/int8.py times
them), and the steps each model reached.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_zoo import measure  # noqa: E402

PRETRAINED_V2 = "../shared/pretrained/mobilenetv2_1.0_imagenet_bnfolded.pth"
ENTRIES = {  # run name -> (model, kwargs); the pretrained-vs-scratch pair first
    "unet_mobilenet_v2_pretrained": ("unet_mobilenet_v2", {"alpha": 1.0, "encoder_weights": PRETRAINED_V2}),
    "unet_mobilenet_v2": ("unet_mobilenet_v2", {"alpha": 1.0}),
    "unet_mobilenet_v3_0.3": ("unet_mobilenet_v3", {"alpha": 0.3}),
    "unet_mobilenet_v1": ("unet_mobilenet_v1", {"alpha": 1.0}),
    "deeplabv3plus": ("deeplabv3plus", {}),
    "deeplabv3plus_pretrained": ("deeplabv3plus", {"encoder_weights": PRETRAINED_V2}),
    "hybrid_mobilenet_v2_pretrained": ("hybrid_mobilenet_v2", {"encoder_weights": PRETRAINED_V2}),
    "unet": ("unet", {}),
}
COLUMNS = ("iou", "dice", "precision", "recall", "auroc")
PERSON_FREE = {"negatives"}  # sources whose masks are empty: IoU is 0 whatever the model does


def score(m: dict, source: str) -> str:
    """IoU, or for a person-free source the share of its pixels called person (1 - accuracy)."""
    return f"{1 - m['accuracy']:.2%}" if source in PERSON_FREE else f"{m['iou']:.4f}"


def train(name: str, out: Path, budget: float, config: Path) -> dict:
    run = out / name
    metrics_file = run / "metrics.jsonl"
    if not metrics_file.is_file():
        model, kwargs = ENTRIES[name]
        cmd = [sys.executable, "-m", "personseg", "train", str(config), "--out", str(run),
               "--set", f"model.name={model}", "--set", f"model.kwargs={json.dumps(kwargs)}",
               "--set", f"time_budget={budget}"]
        print(" ".join(cmd), flush=True)
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    return json.loads(metrics_file.read_text().splitlines()[-1])


def onnx_latency(names: list[str], out: Path, threads: int, runs: int = 30) -> dict[str, float]:
    """ms per 320x180 frame on ONNX Runtime of each run's best.pt, best of three alternating rounds."""
    import tempfile

    import personseg
    from int8 import latency_ms
    from personseg.export import export_onnx
    from personseg.onnx_backend import OnnxModel

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name in names:
            predictor = personseg.load(str(out / name / "best.pt"), refine=False)
            export_onnx(predictor.model, predictor.info, Path(tmp) / f"{name}.onnx")
            sessions[name] = OnnxModel(Path(tmp) / f"{name}.onnx", threads=threads)
        rounds = {name: [] for name in sessions}
        for _ in range(3):
            for name, s in sessions.items():
                rounds[name].append(latency_ms(s, (320, 180), runs))
    return {name: min(r) for name, r in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=10.0, help="minutes of training per model")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--config", type=Path, default=Path("configs/compare.yaml"), help="the shared recipe")
    parser.add_argument("--only", nargs="*", choices=list(ENTRIES), help="a subset of the entries")
    parser.add_argument("--threads", type=int, default=1, help="threads for the latency column")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime on each trained model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(ENTRIES)
    results = {name: train(name, args.out, args.budget, args.config) for name in names}
    torch.set_num_threads(args.threads)
    sources = list(next(iter(results.values()))["metrics"])
    ort_ms = onnx_latency(names, args.out, args.threads) if args.onnx else {}
    print(f"\n{args.budget:g} min of training each (one thread, evaluations excluded), 320x180, recipe {args.config}; "
          f"validation split letterboxed to 320x180; latency eager, batch 1, {args.threads} thread(s)")
    print("| model | params (M) | GFLOPs | ms/frame | ORT ms/frame | steps | " + " | ".join(f"{s} {'called person' if s in PERSON_FREE else 'IoU'}" for s in sources) + " |")
    print("|---" * (6 + len(sources)) + "|")
    for name, r in results.items():
        model, kwargs = ENTRIES[name]
        kwargs = {k: v for k, v in kwargs.items() if k != "encoder_weights"}
        cost = measure(model, kwargs, (320, 180), runs=10)
        ious = " | ".join(score(r["metrics"][s], s) for s in sources)
        ort = f"{ort_ms[name]:.1f}" if name in ort_ms else "-"
        print(f"| {name} | {cost['params_m']:.2f} | {cost['gflops']:.2f} | {cost['ms']:.1f} | {ort} | {r['step']} | {ious} |")
    print("\nper source (pooled = all validation pixels):")
    print("| model | source | " + " | ".join(COLUMNS) + " |")
    print("|---" * (2 + len(COLUMNS)) + "|")
    for name, r in results.items():
        for source, m in r["metrics"].items():
            print(f"| {name} | {source} | " + " | ".join(f"{m[k]:.4f}" for k in COLUMNS) + " |")
    (args.out / "table.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
