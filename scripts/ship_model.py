"""Ship a trained checkpoint as a named model inside the package, and measure what its card reports.

    python scripts/ship_model.py runs/accurate/best.pt --name accurate

Writes personseg/weights/NAME.pt (fp16 weights, the checkpoint's description and training metadata), then
scores THAT file with the full predictor (guided-filter refinement on, source resolution) on every folder of
FOLDERS, on the validation split (card[folder]) and on the held-back split (card["holdout"][folder], the
final figures: nothing else here looks at it), and on a generated set of several small people (validation
cut-outs on validation backgrounds, `personseg.data.write_composite_folder`), measures speed, stores the
figures in the checkpoint's meta["card"] (tests/test_shipped_models.py checks the validation ones) and
prints the model-card tables. Person-free folders (negatives/) have no IoU: their figures are fp_share
(share of pixels called person) and over_5pct (photos with more than 5% called person).

--calibrate picks the threshold on the validation split (never the held-back one). Everything here loads
the written NAME.pt by path; where models ship as ONNX, run scripts/ship_onnx.py NAME afterwards.
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
from personseg.data import list_images, split_items, write_composite_folder
from personseg.evaluate import IGNORE, evaluate_folders, list_items
from personseg.imageio import read_image
from personseg.predict import WEIGHTS_DIR

FOLDERS = ("portraits", "ccp", "hsd", "coco", "negatives", "pennfudan")
METRICS = ("iou", "dice", "precision", "recall", "auroc", "boundary_f")
PERSON_FREE = ("fp_share", "over_5pct")


def figures(m: dict) -> dict:
    """The card's figures of one folder: METRICS, or fp_share and over_5pct where there is no person."""
    keys = (*PERSON_FREE, "person_free") if m.get("person_free") else METRICS
    return {**{k: m[k] for k in keys}, "images": m["images"]}


def score(predictor, data_root: Path) -> dict:
    """Per-folder figures on the validation split and on the held-back split, plus the several-small-people set."""
    result = evaluate_folders(predictor, [data_root / f for f in FOLDERS], split="val")
    card = {name: figures(m) for name, m in result["per_folder"].items()}
    card["pooled_real"] = {k: result["overall"][k] for k in METRICS}
    held = evaluate_folders(predictor, [data_root / f for f in FOLDERS], split="holdout")
    card["holdout"] = {name: figures(m) for name, m in held["per_folder"].items()}
    card["holdout"]["pooled_real"] = {k: held["overall"][k] for k in METRICS}
    with tempfile.TemporaryDirectory() as tmp:
        people = write_composite_folder(data_root, Path(tmp) / "people")
        m = evaluate_folders(predictor, [people], split="all")["overall"]
        card["people"] = {k: m[k] for k in (*METRICS, "images")}
    card["person_free"] = person_free(predictor, data_root)
    return card


def person_free(predictor, data_root: Path) -> dict:
    """Share of the pixels called person where there is no one: the validation backgrounds of composites/
    (scenes) and scikit-image's chelsea (a cat), coffee (a cup) and rocket (a launch pad at night)."""
    from skimage import data

    def share(rgb: np.ndarray) -> float:
        return float((predictor.predict(rgb) >= predictor.threshold).mean())

    backgrounds = split_items(list_images(data_root / "composites" / "backgrounds"), "val")
    result = {"backgrounds": statistics.mean(share(read_image(p)) for p in backgrounds),
              "backgrounds_images": len(backgrounds)}
    return {**result, **{name: share(getattr(data, name)()) for name in ("chelsea", "coffee", "rocket")}}


def calibrate_threshold(predictor, data_root: Path) -> tuple[float, dict]:
    """The threshold with the best IoU pooled over the VALIDATION images of every folder of FOLDERS (the
    held-back split is never looked at; in a person-free folder every pixel called person adds to the
    union). Returns it and IoU per candidate."""
    candidates = np.round(np.arange(0.3, 0.91, 0.05), 2)
    inter, union = np.zeros(len(candidates)), np.zeros(len(candidates))
    for folder in FOLDERS:
        for image_path, truth_of in list_items(data_root / folder, "val"):
            rgb = read_image(image_path)
            mask = truth_of(rgb.shape[:2])[0]
            truth, valid = mask > IGNORE, mask != IGNORE
            alpha = predictor.predict(rgb)
            for j, t in enumerate(candidates):
                pred = (alpha >= t) & valid
                inter[j] += (pred & truth).sum()
                union[j] += (pred | truth).sum()
    ious = inter / union
    return float(candidates[ious.argmax()]), {f"{t:.2f}": float(i) for t, i in zip(candidates, ious)}


def speed(predictor, threads: int) -> dict:
    torch.set_num_threads(threads)
    width, height = predictor.input_size
    x = torch.randn(1, 3, height, width).contiguous(memory_format=torch.channels_last)
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
    return {"threads": threads, "model_input": f"{width}x{height}", "model_ms": statistics.median(times) * 1e3,
            "predict_ms_1280x720": statistics.median(full) * 1e3, "tta": predictor.tta}


def remeasure_speed(name: str, threads: int) -> None:
    """Replace the speed figures in the card of the shipped `name`; the weights stay as they are."""
    target = WEIGHTS_DIR / f"{name}.pt"
    ckpt = read_checkpoint(target)
    model, info = load_checkpoint(target)
    meta = ckpt["meta"]
    meta["card"]["speed"] = speed(personseg.load(target), threads)
    save_checkpoint(target, model, meta=meta, half=True, **{k: info[k] for k in (
        "arch", "model_kwargs", "input_size", "mean", "std", "threshold")})
    assert torch.equal(read_checkpoint(target)["state_dict"]["head.weight"], ckpt["state_dict"]["head.weight"])
    print(f"{target}: speed {meta['card']['speed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", default=os.environ.get("PERSONSEG_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibrate", action="store_true",
                        help="pick the threshold with the best pooled IoU on the validation split (never holdout)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"),
                        help="ship with another pixel budget than the training run's (a speed preset)")
    parser.add_argument("--tta", action="store_true",
                        help="ship with mirror-image averaging on by default (meta['tta']); scored with it")
    parser.add_argument("--speed-only", action="store_true",
                        help="only re-measure the speed of the already shipped NAME (on a quiet machine)")
    args = parser.parse_args()
    if args.speed_only:
        remeasure_speed(args.name, args.threads)
        return

    ckpt = read_checkpoint(args.checkpoint)
    model, info = load_checkpoint(args.checkpoint)
    target = WEIGHTS_DIR / f"{args.name}.pt"
    meta = {**info["meta"], "shipped_from": str(args.checkpoint), "tta": args.tta}
    input_size = args.input_size or info["input_size"]
    fields = dict(arch=info["arch"], model_kwargs=info["model_kwargs"], input_size=input_size,
                  mean=info["mean"], std=info["std"], threshold=info["threshold"], half=True)
    save_checkpoint(target, model, meta=meta, **fields)
    if args.calibrate:
        fields["threshold"], meta["threshold_calibration"] = calibrate_threshold(personseg.load(target), Path(args.data))
        print(f"threshold {fields['threshold']} (pooled IoU on the validation images per candidate: "
              f"{meta['threshold_calibration']})")
        save_checkpoint(target, model, meta=meta, **fields)
    # Score the fp16 file written above, not the run's fp32 weights. By path: the name would load the
    # NAME.onnx beside it, which still holds the previous model until scripts/ship_onnx.py rewrites it.
    shipped = personseg.load(target)
    meta["card"] = score(shipped, Path(args.data))
    shipped.refine = False  # the same model upsampled bilinearly: what the guided filter buys
    plain = evaluate_folders(shipped, [Path(args.data) / f for f in FOLDERS if f != "negatives"],
                             split="val")["per_folder"]
    meta["card"]["bilinear"] = {name: {k: m[k] for k in ("iou", "boundary_f")} for name, m in plain.items()}
    shipped.refine = True
    meta["card"]["speed"] = speed(shipped, args.threads)
    shipped_model, _ = load_checkpoint(target)
    save_checkpoint(target, shipped_model, meta=meta, **fields)
    assert torch.equal(read_checkpoint(target)["state_dict"]["head.weight"], ckpt["state_dict"]["head.weight"].half())

    card = meta["card"]
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")
    print("| set | split | images | IoU | Dice | precision | recall | AUROC | boundary F |")
    print("|---|---|---|---|---|---|---|---|---|")
    splits = (("val", card), ("holdout", card["holdout"]))
    for name, split, m in [(n, s, c[n]) for n in (*FOLDERS, "people") for s, c in splits if n in c]:
        if m.get("person_free"):
            print(f"| {name} | {split} | {m['images']} | person-free: {m['fp_share']:.2%} of pixels called person, "
                  f"{m['over_5pct']} photos over 5% |")
        else:
            print(f"| {name} | {split} | {m['images']} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    print("| set | IoU guided filter | IoU bilinear | boundary F guided filter | boundary F bilinear |")
    print("|---|---|---|---|---|")
    for name in card["bilinear"]:
        g, b = card[name], card["bilinear"][name]
        print(f"| {name} | {g['iou']:.4f} | {b['iou']:.4f} | {g['boundary_f']:.4f} | {b['boundary_f']:.4f} |")
    print(f"share of pixels called person where there is no one: {card['person_free']}")
    print(f"speed: {card['speed']}")


if __name__ == "__main__":
    main()
