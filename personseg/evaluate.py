"""`personseg eval`: score a checkpoint on data folders, as users get it (source-resolution alpha).

A data folder holds `images/NAME.jpg` and `masks/NAME.png`: 0 = background, 255 = person, 128 =
ignore (not counted; `personseg data` writes it for COCO crowd regions); above 128 is person. Masks
that are not the size of their image are resized to it (nearest neighbour on pixel centres) and
counted in `masks_resized`. A COCO folder (`images/` + `annotations.json`, no `masks/`) is scored the
same way: person = the union of the person instances, `iscrowd` regions not covered by one ignored,
exactly as training reads it (`personseg.data.CocoPersons`).

Split: "val" is the training loop's validation split and "holdout" the held-back split that no
training or model choice looks at, both taken from `personseg.folders` (the data-folder contract) so they cannot
drift apart from training: the folder's image/mask pairs sorted by name (COCO: the images with a
person, sorted by file name), index % 10 == 9 is val, index % 10 == 4 holdout. Images without a mask
belong to no split there; here they are skipped under a split and reported as errors under "all".

Person-free folders (every mask of the split empty, e.g. negatives/): IoU is undefined there, so
their iou, dice, precision, recall, boundary_f and mean_image_iou are NaN (null in metrics.json) and
they report `fp_share` (pixels called person / valid pixels, summed over the folder) and `over_5pct`
(photos with more than 5% of their pixels called person) instead.

Outputs in --out: metrics.json (dataset metrics from summed pixel counts, overall and per folder),
per_image.csv, report.html with report_files/ (metrics table, precision-recall curve, the worst images
by IoU as photo | predicted mask | error map). `evaluate_folders` is the reusable part.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import heapq
import html
import io
import json
import math
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from personseg import folders
from personseg.cli import nonnegative_int, pixel_size, positive_int, threshold
from personseg.folders import IGNORE, VAL_EVERY, decode_mask
from personseg.imageio import ImageReadError, read_image, write_image_atomic
from personseg.metrics import BinaryMetrics, per_image_stats, precision_recall_curve
from personseg.predict import KEEP
from personseg.tempfiles import atomic_write

SPLITS = ("val", "holdout", "train", "all")
CSV_COLUMNS = ["folder", "file", "iou", "dice", "precision", "recall", "ms", "person_share"]
OVER_SHARE = 0.05  # a person-free photo with more than this share of pixels called person counts in over_5pct

# Error map colours (RGB) over the dimmed photo; correct person pixels keep the photo's brightness.
FALSE_POSITIVE = (235, 40, 40)  # red: predicted person, is background
FALSE_NEGATIVE = (30, 110, 255)  # blue: missed person
PANEL_HEIGHT = 240


# ---------------------------------------------------------------------------------------------------------
# Data


def list_pairs(folder: str | Path, split: str = "val", limit: int | None = None,
               val_every: int = VAL_EVERY) -> list[tuple[Path, Path | None]]:
    """(image, mask) of `folder` in `split`, in name order, at most `limit`; under "all", images without
    a mask come with None. The data-folder contract (`personseg.folders`) lists and splits them, as
    for the training data loader."""
    folder = Path(folder)
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder}: no {sub}/ folder; a data folder holds images/ and masks/ "
                                    "(personseg data check tells what is wrong with one)")
    if split != "all":
        pairs = folders.list_pairs(folder, split, val_every)[0]
    else:
        pairs, unpaired = folders.list_pairs(folder)
        pairs = sorted(pairs + [(p, None) for p in unpaired], key=lambda pair: pair[0])
    return pairs[:limit] if limit else pairs


def folder_kind(folder: str | Path) -> str:
    """"masks" for images/ + masks/, "coco" for images/ + annotations.json without masks/."""
    folder = Path(folder)
    if not (folder / "images").is_dir():
        raise FileNotFoundError(f"{folder}: no images/ folder; a data folder holds images/ and masks/ "
                                "(or images/ and a COCO annotations.json)")
    if (folder / "masks").is_dir():
        return "masks"
    if (folder / "annotations.json").is_file():
        return "coco"
    raise FileNotFoundError(f"{folder}: no masks/ folder and no annotations.json; a data folder holds images/ "
                            "and masks/ (or images/ and a COCO annotations.json)")


def list_items(folder: str | Path, split: str = "val", limit: int | None = None,
               val_every: int = VAL_EVERY) -> list[tuple[Path, object]]:
    """(image, truth) of `folder` in `split`, in the training loader's order, at most `limit`: truth((H, W))
    returns the (H, W) uint8 mask (0 / 255 / IGNORE) at that size and whether it was resized; None
    for an image without a mask (under "all")."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if folder_kind(folder) == "masks":
        return [(image, None if mask is None else partial(read_mask, mask))
                for image, mask in list_pairs(folder, split, limit, val_every)]
    from personseg.data import CocoPersons

    folder = Path(folder)
    # The training source itself, so images, order, split and crowd handling are the training loader's;
    # under "all" val_every=1 makes every index validation, i.e. every image.
    coco = CocoPersons(folder / "images", folder / "annotations.json", split if split != "all" else "val",
                       limit=limit or 0, val_every=1 if split == "all" else val_every)
    return [(folder / "images" / coco.coco.imgs[i]["file_name"], partial(_coco_truth, coco, k))
            for k, i in enumerate(coco.ids)]


def _coco_truth(coco, k: int, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Sample k of a `CocoPersons` as a mask: 255 person, IGNORE crowd-only, 0 background."""
    raw = coco.load(k, 0)  # no augmentation: load() is the raw image, mask and valid
    mask = np.where(raw["valid"] == 0, IGNORE, raw["mask"] * 255).astype(np.uint8)
    if mask.shape == tuple(size):
        return mask, False
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT), True


def read_mask(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """(H, W) uint8 mask resized to `size` (H, W) if needed, and whether it was resized. A mask of
    another aspect ratio is an ImageReadError (the training loader skips it, `data check` calls it an error)."""
    mask = read_image(path)[..., 0]  # grayscale masks come back with three equal channels
    if mask.shape == tuple(size):
        return mask, False
    if not folders.same_aspect(tuple(size), mask.shape):
        raise ImageReadError(path, f"mask {mask.shape[1]}x{mask.shape[0]}, image {size[1]}x{size[0]}: another "
                                   "aspect ratio (resizing would stretch it); personseg data check lists such pairs")
    # INTER_NEAREST_EXACT samples pixel centres (like PIL's NEAREST); INTER_NEAREST shifts by half a pixel.
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT), True


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def error_map(rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the photo dimmed, correct person pixels at full brightness, false positives
    red and false negatives blue (70% over the photo, so the content stays visible)."""
    out = (rgb * 0.35).astype(np.uint8)
    hit = pred & gt
    out[hit] = rgb[hit]
    for where, color in ((pred & ~gt & valid, FALSE_POSITIVE), (~pred & gt & valid, FALSE_NEGATIVE)):
        out[where] = (rgb[where] * 0.3 + np.asarray(color) * 0.7).astype(np.uint8)
    return out


def make_panel(rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray,
               height: int = PANEL_HEIGHT) -> np.ndarray:
    """photo | predicted mask | error map side by side, `height` pixels tall, (h, w, 3) uint8."""
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    mask_rgb = np.repeat(np.where(pred, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    tiles = [cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA),
             cv2.resize(mask_rgb, (width, height), interpolation=cv2.INTER_AREA),
             cv2.resize(error_map(rgb, pred, gt, valid), (width, height), interpolation=cv2.INTER_AREA)]
    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)


def _folder_names(folders: list[Path]) -> list[str]:
    """The folder's own name, or its path where two folders share a name."""
    names = [f.resolve().name or str(f) for f in folders]
    return [str(f) if names.count(n) > 1 else n for f, n in zip(folders, names)]


def _summary(metrics: BinaryMetrics, rows: list[dict], errors: int, resized: int) -> dict:
    out = metrics.compute()
    out.update({
        "images": len(rows),
        "errors": errors,
        "masks_resized": resized,
        "mean_image_iou": float(np.mean([r["iou"] for r in rows])) if rows else float("nan"),
        "ms_per_image": float(np.mean([r["ms"] for r in rows])) if rows else float("nan"),
    })
    counts = {k: int(v) for k, v in metrics.counts().items() if v.dim() == 0}
    if rows and counts["tp"] + counts["fn"] == 0:  # no person anywhere: IoU is undefined, count false alarms
        out.update({k: float("nan") for k in ("iou", "dice", "precision", "recall", "boundary_f", "mean_image_iou")})
        out.update({"person_free": True, "fp_share": _ratio_or_nan(counts["fp"], counts["fp"] + counts["tn"]),
                    "over_5pct": sum(r["person_share"] > OVER_SHARE for r in rows)})
    return out


def _ratio_or_nan(num: int, den: int) -> float:
    return num / den if den else float("nan")


def evaluate_folders(predictor, folders, split: str = "val", limit: int | None = None, *,
                     threshold: float | None = None, worst: int = 0, progress: bool = False,
                     val_every: int = VAL_EVERY) -> dict:
    """Predict every image of `folders` (images/ + masks/, or COCO: `list_items`) in `split` and score it.

    `predictor` needs `.predict(rgb) -> (H, W) alpha` and `.threshold` (overridden by `threshold`).
    `limit` caps the images per folder; `val_every` is the training run's `data.val_every`.
    Unreadable images or masks and images without a mask are reported on stderr and skipped.
    Returns plain data:
    {"overall": {...}, "per_folder": {name: {...}}, "per_image": [rows of CSV_COLUMNS],
     "errors": [{"folder", "file", "error"}], "pr_curve": {"threshold", "precision", "recall"},
     "worst": [{"folder", "file", "iou", "panel": (h, w, 3) uint8}], "split", "threshold"}.
    Metric dicts hold iou, dice, accuracy, precision, recall, auroc, boundary_f (from pixel counts
    summed over the images), images, errors, masks_resized, mean_image_iou and ms_per_image; a
    person-free folder's (no person pixel in any mask) also person_free, fp_share and over_5pct, with
    the IoU family NaN (module doc). Rows hold person_share, the image's share of valid pixels called person.
    `worst` keeps that many lowest-IoU images, with their panels (`make_panel`).
    """
    from tqdm import tqdm

    threshold = float(predictor.threshold if threshold is None else threshold)
    folders = [Path(f) for f in folders]
    plan = [(name, list_items(folder, split, limit, val_every))
            for folder, name in zip(folders, _folder_names(folders))]
    bar = tqdm(total=sum(len(items) for _, items in plan), unit="image", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty())
    overall = BinaryMetrics(threshold)
    per_folder, rows, errors = {}, [], []
    worst_kept = _WorstImages(worst)
    timer = _Timer(predictor)
    for (name, items), folder in zip(plan, folders):
        metrics, folder_rows, folder_errors, resized = BinaryMetrics(threshold), [], 0, 0
        for image_path, truth in items:
            bar.update()
            try:
                rgb = read_image(image_path)
                if truth is None:
                    raise ImageReadError(image_path, "no mask with this name in masks/")
                mask, was_resized = truth(rgb.shape[:2])
            except ImageReadError as e:
                errors.append({"folder": name, "file": image_path.name, "error": str(e)})
                folder_errors += 1
                tqdm.write(f"error: {e}", file=sys.stderr)
                continue
            resized += was_resized
            alpha, ms = timer.predict(rgb, image_path)
            person, valid = decode_mask(mask)
            prob, gt, valid = (torch.from_numpy(a)[None] for a in (alpha, person > 0, valid > 0))
            metrics.update(prob, gt, valid)
            stats = per_image_stats(prob, gt, valid, threshold)[0]
            called = float(((prob >= threshold) & valid).sum()) / max(1, int(valid.sum()))
            folder_rows.append({"folder": name, "file": image_path.name, **stats, "ms": ms, "person_share": called})
            worst_kept.offer(stats["iou"], name, image_path.name,
                             lambda: make_panel(rgb, alpha >= threshold, gt[0].numpy(), valid[0].numpy()))
        if resized:
            tqdm.write(f"note: {name}: {resized} mask{'s' if resized != 1 else ''} not the size of "
                       "the image, resized to it (nearest)", file=sys.stderr)
        per_folder[name] = _summary(metrics, folder_rows, folder_errors, resized)
        per_folder[name]["without_mask"] = _note_unscored(name, folder, split)
        overall.merge(metrics)
        rows.extend(folder_rows)
    bar.close()
    return _result(overall, per_folder, rows, errors, worst_kept.sorted(), split, threshold)


def _note_unscored(name: str, folder: Path, split: str) -> int:
    """Images of a masks folder without a mask: outside every split (only "all" lists them, as errors);
    a note on stderr says how many were left out."""
    from tqdm import tqdm

    if split == "all" or folder_kind(folder) != "masks":
        return 0
    unpaired = len(folders.list_pairs(folder)[1])
    if unpaired:
        tqdm.write(f"note: {name}: {unpaired} image{' has' if unpaired == 1 else 's have'} no mask in masks/ and "
                   f"{'is' if unpaired == 1 else 'are'} not scored (--split all lists {'it' if unpaired == 1 else 'them'})",
                   file=sys.stderr)
    return unpaired


class _Timer:
    """Times `predictor.predict`; the first call is made twice (one-time costs stay out of ms)."""

    def __init__(self, predictor):
        self.predictor, self.warmed = predictor, False

    def predict(self, rgb: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
        if not self.warmed:
            self.predictor.predict(rgb)
            self.warmed = True
        start = time.perf_counter()
        alpha = np.asarray(self.predictor.predict(rgb), np.float32)
        ms = (time.perf_counter() - start) * 1000
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"the predictor returned a {alpha.shape} alpha for the {rgb.shape[:2]} image "
                             f"{path}; it must return the image's size")
        return alpha, ms


class _WorstImages:
    """The `count` lowest-IoU images with their panels; a heap whose root is the best of the worst kept."""

    def __init__(self, count: int):
        self.count, self.heap, self.order = count, [], 0

    def offer(self, iou: float, folder: str, file: str, panel) -> None:
        self.order += 1
        if self.count > 0 and (len(self.heap) < self.count or -self.heap[0][0] > iou):
            item = (-iou, self.order, folder, file, panel())
            (heapq.heappush if len(self.heap) < self.count else heapq.heapreplace)(self.heap, item)

    def sorted(self) -> list[dict]:
        return [{"folder": f, "file": n, "iou": -neg, "panel": p}
                for neg, _, f, n, p in sorted(self.heap, key=lambda item: (-item[0], item[1]))]


def _result(overall: BinaryMetrics, per_folder: dict, rows: list, errors: list, worst: list, split: str,
            threshold: float) -> dict:
    precision, recall, thresholds = precision_recall_curve(overall)
    step = max(1, overall.num_bins // 100)  # 101 points are plenty for a plot
    return {
        "overall": _summary(overall, rows, len(errors), sum(f["masks_resized"] for f in per_folder.values())),
        "per_folder": per_folder,
        "per_image": rows,
        "errors": errors,
        "pr_curve": {"threshold": thresholds[::step].tolist() + [1.0],
                     "precision": precision[:-1][::step].tolist() + [float(precision[-1])],
                     "recall": recall[:-1][::step].tolist() + [float(recall[-1])]},
        "worst": worst,
        "split": split,
        "threshold": threshold,
    }


# ---------------------------------------------------------------------------------------------------------
# Writing the results


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` via a temporary file in the same folder and os.replace (readers never see half)."""
    with atomic_write(path) as temp, open(temp, "x", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def _json_safe(x):
    """NaN -> None (null), so metrics.json is strict JSON; tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _checkpoint_description(source: str, predictor) -> dict:
    info = getattr(predictor, "info", {}) or {}
    out = {"path": source}
    out.update({k: info[k] for k in ("arch", "model_kwargs", "input_size", "threshold") if k in info})
    spec = getattr(predictor, "spec", None)
    if spec is not None and "input_size" in info and tuple(spec.size) != tuple(info["input_size"]):
        out["run_input_size"] = list(spec.size)  # --input-size: not the budget the model was trained at
    out["refine"] = getattr(predictor, "refine", None)
    out["device"] = str(getattr(predictor, "device", ""))
    return out


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _pr_plot(result: dict) -> np.ndarray:
    from personseg.report import plot_lines

    curve, overall = result["pr_curve"], result["overall"]
    return plot_lines([("all folders", curve["recall"], curve["precision"])],
                      title="precision-recall (pixels, all folders)", xlabel="recall", ylabel="precision",
                      size=(560, 420), xlim=(0.0, 1.02), ylim=(0.0, 1.02),
                      points=[(f"threshold {result['threshold']:g}", overall["recall"], overall["precision"])])


HTML_COLUMNS = [("images", "images"), ("errors", "errors"), ("iou", "IoU"), ("dice", "Dice"),
                ("precision", "precision"), ("recall", "recall"), ("boundary_f", "boundary F"),
                ("auroc", "AUROC"), ("accuracy", "accuracy"), ("mean_image_iou", "mean image IoU"),
                ("fp_share", "share called person (person-free)"), ("over_5pct", "photos over 5% (person-free)"),
                ("ms_per_image", "ms / image")]


def _cell(value) -> str:
    if isinstance(value, float):
        return "&ndash;" if not math.isfinite(value) else f"{value:.1f}" if value > 1 else f"{value:.4f}"
    return html.escape(str(value))


def report_html(result: dict, checkpoint: dict, worst_files: list[str], pr_file: str) -> str:
    """The report page; images are referenced by relative path (they live in report_files/)."""
    e = html.escape
    table_rows = [("all folders", result["overall"])] + list(result["per_folder"].items())
    head = "".join(f"<th>{e(label)}</th>" for _, label in HTML_COLUMNS)
    body = "".join(f"<tr><th>{e(name)}</th>" + "".join(f"<td>{_cell(m.get(k, math.nan))}</td>" for k, _ in HTML_COLUMNS)
                   + "</tr>" for name, m in table_rows)
    worst = "".join(
        f"<tr><td>{i}</td><td>{e(w['folder'])}/{e(w['file'])}</td><td>{w['iou']:.4f}</td>"
        f"<td><img src=\"{e(src)}\" alt=\"{e(w['file'])}\"></td></tr>"
        for i, (w, src) in enumerate(zip(result["worst"], worst_files), 1))
    errors = "".join(f"<li>{e(x['folder'])}/{e(x['file'])}: {e(x['error'])}</li>" for x in result["errors"])
    model = ", ".join(f"{k}: {e(json.dumps(v))}" for k, v in checkpoint.items() if k != "path")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>personseg eval: {e(checkpoint['path'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:nth-child(2) {{ text-align: left; }}
.key span {{ display: inline-block; width: 1em; height: 1em; vertical-align: middle; }}
</style></head><body>
<h1>personseg eval</h1>
<p>checkpoint <code>{e(checkpoint['path'])}</code> ({model})<br>
split <b>{e(result['split'])}</b>, threshold {result['threshold']:g}, {stamp}</p>
<h2>Metrics</h2>
<p>IoU, Dice, precision, recall, boundary F and AUROC come from pixel counts summed over each folder's
images (dataset metrics); mean image IoU averages the per-image IoUs. Source resolution. Folders with no
person (every mask empty) have no IoU: they report the share of their pixels called person and the photos
with more than {OVER_SHARE:.0%} of their pixels called person.</p>
<table><tr><th>folder</th>{head}</tr>{body}</table>
{f"<h2>Unreadable images ({len(result['errors'])})</h2><ul>{errors}</ul>" if errors else ""}
<h2>Precision-recall</h2>
<img src="{e(pr_file)}" alt="precision-recall curve">
<h2>Worst {len(result['worst'])} images by IoU</h2>
<p class="key">photo | predicted mask | errors: <span style="background: rgb{FALSE_POSITIVE}"></span> false
positive (predicted person, is background), <span style="background: rgb{FALSE_NEGATIVE}"></span> false
negative (missed person), bright = correct person, dim = correct background.</p>
<table><tr><th>#</th><th>image</th><th>IoU</th><th>photo | prediction | errors</th></tr>{worst}</table>
</body></html>
"""


def write_outputs(outdir: str | Path, result: dict, checkpoint: dict) -> None:
    """metrics.json, per_image.csv, report.html and report_files/ in `outdir`, each written atomically."""
    outdir = Path(outdir)
    files = outdir / "report_files"
    worst_files = []
    for i, w in enumerate(result["worst"], 1):
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{w['folder']}_{Path(w['file']).stem}")
        name = f"worst_{i:02d}_{stem}.jpg"
        write_image_atomic(files / name, w["panel"], overwrite=True)
        worst_files.append(f"report_files/{name}")
    write_image_atomic(files / "pr_curve.png", _pr_plot(result), overwrite=True)
    metrics = {
        "checkpoint": checkpoint,
        "split": result["split"],
        "threshold": result["threshold"],
        "overall": result["overall"],
        "per_folder": result["per_folder"],
        "errors": result["errors"],
        "worst": [{k: w[k] for k in ("folder", "file", "iou")} for w in result["worst"]],
        "pr_curve": result["pr_curve"],
    }
    write_text_atomic(outdir / "metrics.json", json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n")
    write_text_atomic(outdir / "per_image.csv", _csv_text(result["per_image"]))
    write_text_atomic(outdir / "report.html", report_html(result, checkpoint, worst_files, "report_files/pr_curve.png"))


# ---------------------------------------------------------------------------------------------------------
# CLI






def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("exit status: 0 every image scored; 1 some images or masks could not be read (each "
                     "named on stderr, counted in metrics.json); 2 bad arguments, no data, or the model "
                     "could not be loaded.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a shipped model name")
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="data folders, each with images/ and masks/, or images/ and a COCO annotations.json")
    parser.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="DIR",
                        help="folder for metrics.json, per_image.csv, report.html and report_files/")
    parser.add_argument("--split", choices=SPLITS, default="val",
                        help="val: the training loop's validation split (image/mask pairs sorted by name, "
                             "index %% 10 == 9); holdout: the held-back split (index %% 10 == 4) for final "
                             "figures only; train: the other pairs; all: every image (default: val)")
    parser.add_argument("--val-every", type=positive_int, default=VAL_EVERY, metavar="N",
                        help="the split rule's period: the training run's data.val_every (default: %(default)s)")
    parser.add_argument("--limit", type=nonnegative_int, default=0, metavar="N",
                        help="score at most N images per folder (default: 0 = all)")
    parser.add_argument("--threshold", type=threshold, metavar="T",
                        help="alpha at or above which a pixel is person (default: the model's own)")
    parser.add_argument("--input-size", type=pixel_size, metavar="WxH",
                        help="run the model at this pixel budget: each photo resized, keeping its aspect "
                             "ratio, to the area of WxH (default: the model's own input_size). Measures "
                             "what a larger or smaller budget gives a trained model (small people need pixels)")
    parser.add_argument("--no-refine", action="store_true",
                        help="upsample bilinearly instead of with the guided filter")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction,
                        help="average with the mirror image's output (default: the model's own setting)")
    parser.add_argument("--keep", choices=KEEP, default="all",
                        help="score every person found, or the largest person region only (default: all)")
    parser.add_argument("--worst", type=nonnegative_int, default=12, metavar="K",
                        help="show the K images with the lowest IoU in the report (default: 12)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run the model (default: auto, cuda when available)")


def folder_table(result: dict) -> str:
    """The per-folder metrics as a text table; person-free folders show their false-alarm figures."""
    lines = [f"{'folder':<16} {'images':>6} {'IoU':>7} {'Dice':>7} {'precision':>9} {'recall':>7} {'ms/image':>8}"]
    for name, m in [*result["per_folder"].items(), ("all folders", result["overall"])]:
        if m.get("person_free"):
            lines.append(f"{name:<16} {m['images']:>6} person-free: {m['fp_share']:.2%} of pixels called person, "
                         f"{m['over_5pct']} of {m['images']} photos over {OVER_SHARE:.0%}; "
                         f"{m['ms_per_image']:.1f} ms/image")
        else:
            lines.append(f"{name:<16} {m['images']:>6} {m['iou']:>7.4f} {m['dice']:>7.4f} {m['precision']:>9.4f} "
                         f"{m['recall']:>7.4f} {m['ms_per_image']:>8.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import personseg

    def usage_error(message: str) -> int:
        print(f"personseg eval: {message}", file=sys.stderr)
        return 2

    for folder in args.data:
        try:
            folder_kind(folder)
        except FileNotFoundError as e:
            return usage_error(str(e))
    try:
        predictor = personseg.load(args.checkpoint, device=args.device, refine=not args.no_refine, tta=args.tta,
                                   keep=args.keep, threshold=args.threshold)
    except (OSError, ValueError) as e:
        return usage_error(f"cannot load the model: {e}")
    if args.input_size:
        predictor.spec = dataclasses.replace(predictor.spec, size=args.input_size)
    result = evaluate_folders(predictor, args.data, args.split, args.limit or None, worst=args.worst,
                              progress=True, val_every=args.val_every)
    if not result["per_image"] and not result["errors"]:
        return usage_error(f"no images in {' '.join(args.data)} (split {args.split})")
    try:
        write_outputs(args.out, result, _checkpoint_description(args.checkpoint, predictor))
    except OSError as e:
        print(f"personseg eval: cannot write the results to {args.out}: {e}", file=sys.stderr)
        return 1

    overall = result["overall"]
    print(folder_table(result), file=sys.stderr)
    folders = ", ".join(f"{name} {m['iou']:.4f}" for name, m in result["per_folder"].items()
                        if not m.get("person_free"))
    print(f"IoU {overall['iou']:.4f} on {overall['images']} images ({folders}); "
          f"report: {Path(args.out) / 'report.html'}", file=sys.stderr)
    if result["errors"]:
        print(f"{len(result['errors'])} image{'s' if len(result['errors']) != 1 else ''} could not be "
              "scored (listed above and in metrics.json)", file=sys.stderr)
        return 1
    return 0
