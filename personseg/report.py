"""`personseg report RUNDIR`: training curves from a run's logs to one PNG.

`personseg train` writes RUNDIR/log.jsonl (every `log_every` steps: step, epoch, lr, loss and its
terms such as bce and tversky, boundary_weight, time) and RUNDIR/metrics.jsonl (every evaluation:
step, and `metrics` with one {iou, dice, ...} dict per validation source plus "pooled"). Both are read;
nested objects are flattened with "/" (`metrics/ccp/iou`), and every numeric key becomes a series
against `step` (the line number when a record has none). Three panels:
  loss           log.jsonl keys holding "loss", and its other top-level numbers (the loss terms),
                 except step, epoch, time, the learning rate and weights such as boundary_weight;
  learning rate  `lr` (log scale);
  validation IoU every key ending in "iou", one line per source.
A missing key only leaves a gap, so logs from older or newer training loops still plot.

The plots are drawn with OpenCV (`plot_lines`) rather than matplotlib, to keep the dependency list
short; `personseg eval` uses the same function for its precision-recall curve.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.jsonl"
DEFAULT_OUTPUT = "curves.png"
STEP_KEYS = ("step", "global_step", "iteration", "iter")
NOT_LOSS = ("epoch", "time", "seconds")  # top-level numbers of log.jsonl that are not loss terms

# matplotlib's tab10, RGB
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (40, 40, 40)
GRID = (225, 225, 225)

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)


# ---------------------------------------------------------------------------------------------------------
# Plotting


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in (1, 2, 5, 10) if s * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-12 else "0"


def _limits(values: np.ndarray, fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return float(fixed[0]), float(fixed[1])
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    pad = (hi - lo) * 0.05 if hi > lo else max(abs(lo) * 0.1, 0.5)
    return lo - pad, hi + pad


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4, color=INK,
          align: str = "left") -> None:
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    x, y = org
    if align == "center":
        x -= w // 2
    elif align == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y + h // 2)), FONT, scale, color, 1, cv2.LINE_AA)


def plot_lines(series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
               size: tuple[int, int] = (760, 320), xlim: tuple[float, float] | None = None,
               ylim: tuple[float, float] | None = None, log_y: bool = False,
               points: Sequence[tuple[str, float, float]] = ()) -> np.ndarray:
    """A line chart as an (H, W, 3) uint8 RGB image; `size` is (W, H).

    NaN and (with `log_y`) non-positive values leave gaps; a series of one point is drawn as a dot.
    `points` are labelled markers, e.g. the operating point on a precision-recall curve.
    """
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 16, 28, 42
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area in pixels
    if title:
        _text(img, title, (width // 2, 12), 0.5, align="center")

    data = []
    for label, xs, ys in series:
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        if log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                ys = np.where(ys > 0, np.log10(ys), np.nan)
        data.append((label, xs, ys))
    all_x = np.concatenate([d[1] for d in data] + [np.array([p[1] for p in points], np.float64)])
    all_y = np.concatenate([d[2] for d in data] + [np.array([p[2] for p in points], np.float64)])
    if log_y and ylim is not None:
        ylim = (math.log10(ylim[0]), math.log10(ylim[1]))
    xlo, xhi = _limits(all_x, xlim)
    ylo, yhi = _limits(all_y, ylim)

    def to_px(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x0 + (x - xlo) / (xhi - xlo) * (x1 - x0), y1 - (y - ylo) / (yhi - ylo) * (y1 - y0))

    # Grid, ticks and their labels. On a log axis, ticks are the decades when there are two or more.
    yticks = _nice_ticks(ylo, yhi)
    if log_y:  # decades, or 1-2-5 steps within them, or linear steps on a narrow range
        decades = range(math.floor(ylo), math.ceil(yhi) + 1)
        for mantissas in ((1,), (1, 2, 5)):
            ticks = [e + math.log10(m) for e in decades for m in mantissas if ylo <= e + math.log10(m) <= yhi]
            if len(ticks) >= 2:
                yticks = ticks
                break
        else:
            yticks = [math.log10(t) for t in _nice_ticks(10 ** ylo, 10 ** yhi) if t > 0]
    for t in _nice_ticks(xlo, xhi):
        px = int(round(to_px(np.array(t), np.array(0.0))[0]))
        cv2.line(img, (px, y0), (px, y1), GRID, 1)
        _text(img, _fmt(t), (px, y1 + 10), align="center")
    for t in yticks:
        py = int(round(to_px(np.array(0.0), np.array(t))[1]))
        cv2.line(img, (x0, py), (x1, py), GRID, 1)
        _text(img, f"{10 ** t:.2g}" if log_y else _fmt(t), (x0 - 5, py), align="right")
    cv2.rectangle(img, (x0, y0), (x1, y1), INK, 1)
    if xlabel:
        _text(img, xlabel, ((x0 + x1) // 2, height - 12), 0.45, align="center")
    if ylabel:
        (w, h), _ = cv2.getTextSize(ylabel, FONT, 0.45, 1)
        label = np.full((h + 8, w + 4, 3), 255, np.uint8)
        cv2.putText(label, ylabel, (2, h + 2), FONT, 0.45, INK, 1, cv2.LINE_AA)
        label = np.ascontiguousarray(np.rot90(label))  # reads bottom to top
        ly = max(0, (y0 + y1 - label.shape[0]) // 2)
        label = label[: height - ly]
        img[ly:ly + label.shape[0], 2:2 + label.shape[1]] = label

    # The lines, clipped to the plot area; NaNs split a line into runs.
    plot = img[y0:y1 + 1, x0:x1 + 1]
    for i, (label, xs, ys) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        px, py = to_px(xs, ys)
        ok = np.isfinite(px) & np.isfinite(py)
        runs = np.split(np.arange(len(xs)), np.flatnonzero(np.diff(ok.astype(np.int8))) + 1)
        for run in runs:
            if len(run) == 0 or not ok[run[0]]:
                continue
            pts = np.stack([px[run] - x0, py[run] - y0], 1).round().astype(np.int32)
            if len(pts) == 1:
                cv2.circle(plot, tuple(int(v) for v in pts[0]), 3, color, -1, cv2.LINE_AA)
            else:
                cv2.polylines(plot, [pts], False, color, 2, cv2.LINE_AA)
    for label, x, y in points:
        px, py = to_px(np.array(x, np.float64), np.array(math.log10(y) if log_y else y, np.float64))
        if np.isfinite(px) and np.isfinite(py):
            px, py = int(round(px)), int(round(py))
            cv2.circle(img, (px, py), 5, INK, -1, cv2.LINE_AA)
            fits = px + 8 + cv2.getTextSize(label, FONT, 0.4, 1)[0][0] <= x1
            _text(img, label, (px + 8 if fits else px - 8, py - 10), align="left" if fits else "right")

    if not data and not points:
        _text(img, "no data", ((x0 + x1) // 2, (y0 + y1) // 2), 0.6, color=(150, 150, 150), align="center")
    elif data:  # legend, top right inside the plot
        rows = [(label, PALETTE[i % len(PALETTE)]) for i, (label, _, _) in enumerate(data)]
        text_w = max(cv2.getTextSize(label, FONT, 0.4, 1)[0][0] for label, _ in rows)
        bx1, by0 = x1 - 6, y0 + 6
        bx0, by1 = bx1 - text_w - 36, by0 + 16 * len(rows) + 6
        cv2.rectangle(img, (bx0, by0), (bx1, by1), (255, 255, 255), -1)
        cv2.rectangle(img, (bx0, by0), (bx1, by1), GRID, 1)
        for j, (label, color) in enumerate(rows):
            cy = by0 + 11 + 16 * j
            cv2.line(img, (bx0 + 6, cy), (bx0 + 24, cy), color, 2, cv2.LINE_AA)
            _text(img, label, (bx0 + 30, cy))
    return img


# ---------------------------------------------------------------------------------------------------------
# Training curves


def _flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record, keyed "a/b/c"; booleans and strings are dropped."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def read_log(path: str | Path) -> tuple[list[dict[str, float]], int]:
    """Flattened records of a log.jsonl, and the number of lines that were not JSON objects (skipped:
    the last line may be half-written while a run is going)."""
    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(_flatten(record))
            else:
                bad += 1
    return records, bad


def _is_lr(key: str) -> bool:
    last = key.rsplit("/", 1)[-1].lower()
    return last in ("lr", "learning_rate") or re.fullmatch(r"lr[_\-]?\w*", last) is not None


def _series(records: list[dict[str, float]], keys: list[str]) -> list[Series]:
    out = []
    for key in keys:
        xs, ys = [], []
        for i, record in enumerate(records):
            if key in record:
                xs.append(next((record[k] for k in STEP_KEYS if k in record), float(i + 1)))
                ys.append(record[key])
        out.append((key, xs, ys))
    return out


def _label(key: str) -> str:
    """metrics/portraits/iou -> portraits; val/hsd/iou -> hsd."""
    parts = key.split("/")
    if len(parts) > 1 and parts[-1].lower() == "iou":
        parts = parts[:-1]
        if len(parts) > 1 and parts[0].lower() in ("metrics", "val"):
            parts = parts[1:]
    return "/".join(parts)


def render_curves(log: list[dict[str, float]], evals: list[dict[str, float]] | None = None,
                  title: str = "") -> np.ndarray:
    """Loss, learning rate and IoU panels stacked, from log.jsonl and metrics.jsonl records: an
    (H, W, 3) uint8 RGB image."""
    def keys_of(records) -> list[str]:
        return [k for k in dict.fromkeys(k for r in records for k in r) if k not in STEP_KEYS]  # first-seen order

    def is_loss(key: str) -> bool:
        low = key.lower()
        if "loss" in low:
            return True
        return ("/" not in key and low not in NOT_LOSS and not _is_lr(key) and "weight" not in low
                and "iou" not in low)

    evals = evals or []
    log_keys = keys_of(log)
    loss_keys = [k for k in log_keys if is_loss(k)]
    lr_keys = [k for k in log_keys if _is_lr(k) and k not in loss_keys]
    lr_series = _series(log, lr_keys) if lr_keys else _series(evals, [k for k in keys_of(evals) if _is_lr(k)])
    iou_series = [(_label(k), xs, ys) for k, xs, ys in
                  _series(log, [k for k in log_keys if k.lower().endswith("iou") and k not in loss_keys])
                  + _series(evals, [k for k in keys_of(evals) if k.lower().endswith("iou")])]
    records = list(log) + list(evals)
    has_step = any(k in r for r in records for k in STEP_KEYS)
    xlabel = "step" if has_step else "log line"
    loss_series = _series(log, loss_keys)
    steps = np.array([x for _, xs, _ in loss_series + lr_series + iou_series for x in xs], np.float64)
    xlim = _limits(steps, None) if steps.size else None  # one x range, so the panels line up
    panels = [
        plot_lines(loss_series, title=f"{title}  loss".strip(), xlabel=xlabel, ylabel="loss", xlim=xlim),
        plot_lines(lr_series, title="learning rate", xlabel=xlabel, ylabel="lr", log_y=True, xlim=xlim),
        plot_lines(iou_series, title="validation IoU", xlabel=xlabel, ylabel="IoU", xlim=xlim),
    ]
    return np.concatenate(panels, axis=0)


# ---------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rundir", metavar="RUNDIR",
                        help=f"a training run folder (holding {LOG_NAME}, and {METRICS_NAME} once evaluated)")
    parser.add_argument("-o", "--output", metavar="PNG",
                        help=f"where to write the picture (default: RUNDIR/{DEFAULT_OUTPUT})")


def run(args: argparse.Namespace) -> int:
    from personseg.imageio import write_image_atomic

    rundir = Path(args.rundir)
    log = rundir / LOG_NAME
    if not rundir.is_dir():
        print(f"personseg report: {rundir}: no such folder; pass a run folder written by personseg train",
              file=sys.stderr)
        return 2
    if not log.is_file():
        print(f"personseg report: {rundir} has no {LOG_NAME}; pass the folder a `personseg train` run "
              "writes its checkpoints and log to (the log appears after the first logged step)", file=sys.stderr)
        return 2
    records, bad = read_log(log)
    evals, bad_evals = read_log(rundir / METRICS_NAME) if (rundir / METRICS_NAME).is_file() else ([], 0)
    for name, n in ((LOG_NAME, bad), (METRICS_NAME, bad_evals)):
        if n:
            print(f"personseg report: skipped {n} line{'s' if n != 1 else ''} of {rundir / name} that "
                  f"{'are' if n != 1 else 'is'} not a JSON object", file=sys.stderr)
    if not records and not evals:
        print(f"personseg report: {log} has no records yet", file=sys.stderr)
        return 1
    output = Path(args.output) if args.output else rundir / DEFAULT_OUTPUT
    try:
        write_image_atomic(output, render_curves(records, evals, title=rundir.resolve().name), overwrite=True)
    except (OSError, ValueError) as e:
        print(f"personseg report: cannot write {output}: {e}", file=sys.stderr)
        return 1
    print(f"{len(records)} log and {len(evals)} evaluation records plotted to {output}", file=sys.stderr)
    return 0
