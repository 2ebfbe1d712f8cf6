"""Ship a trained checkpoint as a named model inside the package, and measure what its card reports.

    python scripts/ship_model.py runs/accurate/best.pt --name accurate

Writes personseg/weights/NAME.pt (fp16 weights, the checkpoint's description and training metadata), then
scores THAT file with the full predictor (guided-filter refinement on, source resolution) on the fixed
validation split of portraits/, ccp/ and hsd/ and on a generated set of several small people (validation
cut-outs on validation backgrounds, `personseg.data.write_composite_folder`), measures speed, stores the
figures in the checkpoint's meta["card"] (tests/test_shipped_models.py checks them) and prints the
model-card tables.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import personseg
from personseg.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from personseg.data import write_composite_folder
from personseg.evaluate import evaluate_folders
from personseg.predict import WEIGHTS_DIR

FOLDERS = ("portraits", "ccp", "hsd")
METRICS = ("iou", "dice", "precision", "recall", "auroc", "boundary_f")


def score(predictor, data_root: Path) -> dict:
    """Per-folder metrics on the validation split, plus the several-small-people set."""
    result = evaluate_folders(predictor, [data_root / f for f in FOLDERS], split="val")
    card = {name: {k: m[k] for k in (*METRICS, "images")} for name, m in result["per_folder"].items()}
    card["pooled_real"] = {k: result["overall"][k] for k in METRICS}
    with tempfile.TemporaryDirectory() as tmp:
        people = write_composite_folder(data_root, Path(tmp) / "people")
        m = evaluate_folders(predictor, [people], split="all")["overall"]
        card["people"] = {k: m[k] for k in (*METRICS, "images")}
    return card


def speed(predictor, threads: int) -> dict:
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, 180, 320).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(25):
            start = time.perf_counter()
            predictor.model(x)
            if i >= 5:
                times.append(time.perf_counter() - start)
    photo = (np.random.default_rng(0).random((720, 1280, 3)) * 255).astype(np.uint8)
    full = []
    for i in range(8):
        start = time.perf_counter()
        predictor.predict(photo)
        if i >= 2:
            full.append(time.perf_counter() - start)
    return {"threads": threads, "model_ms_320x180": statistics.median(times) * 1e3,
            "predict_ms_1280x720": statistics.median(full) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", default=os.environ.get("PERSONSEG_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    ckpt = read_checkpoint(args.checkpoint)
    model, info = load_checkpoint(args.checkpoint)
    target = WEIGHTS_DIR / f"{args.name}.pt"
    meta = {**info["meta"], "shipped_from": str(args.checkpoint)}
    fields = dict(arch=info["arch"], model_kwargs=info["model_kwargs"], input_size=info["input_size"],
                  mean=info["mean"], std=info["std"], threshold=info["threshold"], half=True)
    save_checkpoint(target, model, meta=meta, **fields)
    shipped = personseg.load(args.name)  # score the fp16 file users get, not the run's fp32 weights
    meta["card"] = score(shipped, Path(args.data))
    meta["card"]["speed"] = speed(shipped, args.threads)
    shipped_model, _ = load_checkpoint(target)
    save_checkpoint(target, shipped_model, meta=meta, **fields)
    assert torch.equal(read_checkpoint(target)["state_dict"]["head.weight"], ckpt["state_dict"]["head.weight"].half())

    card = meta["card"]
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")
    print("| set | images | IoU | Dice | precision | recall | AUROC | boundary F |")
    print("|---|---|---|---|---|---|---|---|")
    for name in (*FOLDERS, "people"):
        m = card[name]
        print(f"| {name} | {m['images']} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    print(f"speed: {card['speed']}")


if __name__ == "__main__":
    main()
