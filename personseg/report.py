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

The plots are drawn with matplotlib's Agg backend (a `Figure` and its canvas, pyplot's global state
left alone) into arrays; `personseg eval` uses `plot_lines` for its precision-recall curve.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.jsonl"
DEFAULT_OUTPUT = "curves.png"
STEP_KEYS = ("step", "global_step", "iteration", "iter")
NOT_LOSS = ("epoch", "time", "seconds")  # top-level numbers of log.jsonl that are not loss terms
DPI = 100

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)


# ---------------------------------------------------------------------------------------------------------
# Plotting


def _draw(ax: Axes, series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
          xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
          log_y: bool = False, points: Sequence[tuple[str, float, float]] = ()) -> None:
    """One panel: a line per series (NaN and, with `log_y`, non-positive values leave gaps; a series
    of one point is a dot), and `points` as labelled markers."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9")
    positive = False
    for label, xs, ys in series:
        ys = np.asarray(ys, np.float64)
        if log_y:
            ys = np.where(ys > 0, ys, np.nan)
            positive |= bool(np.isfinite(ys).any())
        ax.plot(np.asarray(xs, np.float64), ys, label=label, linewidth=1.5,
                marker="o" if np.isfinite(ys).sum() == 1 else None, markersize=4)
    for label, x, y in points:
        ax.plot([x], [y], "o", color="0.15", markersize=6)
    if log_y and positive:
        ax.set_yscale("log")
    ax.set_xlim(xlim)  # None: fit the data
    ax.set_ylim(ylim)
    for label, x, y in points:  # the label on the side with room
        right = x > sum(ax.get_xlim()) / 2
        ax.annotate(label, (x, y), xytext=(-8 if right else 8, 8), textcoords="offset points",
                    ha="right" if right else "left", fontsize=8)
    if series:
        ax.legend(loc="upper right", fontsize=8)
    elif not points:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.6")


def _figure(size: tuple[int, int]) -> Figure:
    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


def _pixels(figure: Figure) -> np.ndarray:
    """The figure rendered by Agg as an (H, W, 3) uint8 RGB image."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_lines(series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
               size: tuple[int, int] = (760, 320), xlim: tuple[float, float] | None = None,
               ylim: tuple[float, float] | None = None, log_y: bool = False,
               points: Sequence[tuple[str, float, float]] = ()) -> np.ndarray:
    """A line chart as an (H, W, 3) uint8 RGB image; `size` is (W, H).

    NaN and (with `log_y`) non-positive values leave gaps; a series of one point is drawn as a dot.
    `points` are labelled markers, e.g. the operating point on a precision-recall curve.
    """
    figure = _figure(size)
    _draw(figure.add_subplot(), series, title=title, xlabel=xlabel, ylabel=ylabel, xlim=xlim, ylim=ylim,
          log_y=log_y, points=points)
    return _pixels(figure)


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
    has_step = any(k in r for r in list(log) + list(evals) for k in STEP_KEYS)
    figure = _figure((760, 960))
    loss_ax, lr_ax, iou_ax = figure.subplots(3, 1, sharex=True)  # one x range, so the panels line up
    _draw(loss_ax, _series(log, loss_keys), title=f"{title}  loss".strip(), ylabel="loss")
    _draw(lr_ax, lr_series, title="learning rate", ylabel="lr", log_y=True)
    _draw(iou_ax, iou_series, title="validation IoU", xlabel="step" if has_step else "log line", ylabel="IoU")
    return _pixels(figure)


# ---------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rundir", metavar="RUNDIR",
                        help=f"a training run folder (holding {LOG_NAME}, and {METRICS_NAME} once evaluated)")
    parser.add_argument("-o", "--output", "--out", dest="output", metavar="PNG",
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
