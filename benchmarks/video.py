"""Temporal quality and end-to-end speed of `personseg video`.

Quality, on every DATA/video/<seq>/{frames,masks} clip (DAVIS-style, 854x480): J (mean per-frame IoU)
and flicker (of the pixels whose ground truth keeps its label between consecutive frames, the share
whose predicted label changes; lower is steadier), for
  per-frame   the model on each frame alone
  median      + TemporalMedian()   (centred median of 3 frames + hysteresis 0.05; `personseg video`'s default)
  median-nohyst, median5   the same without hysteresis; over 5 frames
  ema-nohyst  + TemporalFilter("ema", hysteresis=0)   (causal motion-aware smoothing alone)
  ema         + TemporalFilter("ema")   (causal motion-aware smoothing + hysteresis 0.2 around the threshold)
  flow        + TemporalFilter("flow")  (the same after optical-flow warping)
  tracked     PersonTracker: a crop around the previous mask, full-frame re-detection every 30 frames
  recurrent   a recurrent checkpoint carrying its state (only with --recurrent CKPT)
Small people: --small N adds N synthetic clips (48 frames, 854x480) of one validation cut-out, 12-25% of
the frame tall, walking across a validation background (composites/, the training split never used),
scored per-frame against tracked (does the crop around the person recover what the full frame loses?),
each also with the default temporal median: clips its window was not chosen on.
Caveats of the ground truth: dance-twirl's spectators are not masked (a person model finds them, and
J drops for it); scooter-black's mask includes the scooter.

Speed: frames/s of `process_video` (decode + inference + temporal "median" + blur composite + H.264
encode, threads overlapping) on a clip made by resizing dance-twirl to 480p and 720p, with the thread
count printed.

    python benchmarks/video.py --model personseg/weights/accurate.pt [--recurrent CKPT] [--limit 10]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

import personseg
from personseg.metrics import video_metrics
from personseg.video import (FolderSource, Frame, PersonTracker, RecurrentSegmenter, TemporalFilter, TemporalMedian,
                             process_video, segment_frames, smooth)

SIZES = {"480p": (854, 480), "720p": (1280, 720)}


def read_masks(folder: Path, limit: int | None):
    for path in sorted(folder.glob("*.png"))[:limit]:
        yield np.asarray(Image.open(path).convert("L")) > 127


def filters(threshold: float) -> dict:
    """name -> a function making a fresh temporal filter (None: none) for the per-frame model's output."""
    return {
        "per-frame": lambda: None,
        "median": lambda: TemporalMedian(threshold=threshold),
        "median-nohyst": lambda: TemporalMedian(threshold=threshold, hysteresis=0.0),
        "median5": lambda: TemporalMedian(5, threshold=threshold),
        "ema-nohyst": lambda: TemporalFilter("ema", threshold=threshold, hysteresis=0.0),
        "ema": lambda: TemporalFilter("ema", threshold=threshold),
        "flow": lambda: TemporalFilter("flow", threshold=threshold),
    }


def record(sequence: str, method: str, preds: list, truth, seconds: float) -> dict:
    """One result row (J, flicker, ms per frame), printed as it comes."""
    row = {"sequence": sequence, "method": method, **video_metrics(preds, truth),
           "ms_per_frame": 1000 * seconds / len(preds)}
    print(f"{sequence:14s} {method:16s} J {row['J']:.3f}  flicker {row['flicker']:.4f}  "
          f"{row['ms_per_frame']:.0f} ms/frame", flush=True)
    return row


def quality(data: Path, predictor, recurrent, limit: int | None, batch_size: int) -> list[dict]:
    """The per-frame model runs once per clip; each temporal filter then runs on its output (timed apart:
    ms_per_frame = model + filter). The tracker and the recurrent model run the clip themselves."""
    rows = []

    def add(seq, name, preds, seconds):
        rows.append(record(seq.name, name, preds, read_masks(seq / "masks", limit), seconds))

    for seq in sorted(p for p in (data / "video").iterdir() if (p / "frames").is_dir()):
        start = time.perf_counter()
        frames = list(segment_frames(FolderSource(seq / "frames", limit=limit), predictor, None, batch_size))
        model_seconds = time.perf_counter() - start
        for name, make in filters(predictor.threshold).items():
            smoother = make()
            start = time.perf_counter()
            alphas = [a for _, a in smooth(frames, smoother)] if smoother else [a for _, a in frames]
            add(seq, name, [a >= predictor.threshold for a in alphas], model_seconds + time.perf_counter() - start)
        del frames
        others = {"tracked": PersonTracker(predictor)}
        if recurrent is not None:
            others["recurrent"] = RecurrentSegmenter(recurrent)
        for name, segmenter in others.items():
            threshold = (recurrent if name == "recurrent" else predictor).threshold
            start = time.perf_counter()
            preds = [a >= threshold for _, a in segment_frames(FolderSource(seq / "frames", limit=limit),
                                                                 segmenter, None, batch_size)]
            add(seq, name, preds, time.perf_counter() - start)
    print("against per-frame (J difference / flicker ratio):")
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "per-frame"):
        cells = []
        for base in (r for r in rows if r["method"] == "per-frame"):
            row = next(r for r in rows if r["method"] == method and r["sequence"] == base["sequence"])
            ratio = row["flicker"] / base["flicker"] if base["flicker"] else float("nan")
            cells.append(f"{base['sequence']} {row['J'] - base['J']:+.3f} / {ratio:.2f}x")
        print(f"  {method:16s} " + "   ".join(cells), flush=True)
    return rows


def small_people_clips(data: Path, count: int, frames: int = 48, size: tuple[int, int] = (854, 480)):
    """`count` clips [(rgb, mask)] of one small cut-out moving (and growing or shrinking) over a background."""
    import cv2

    from personseg.data import list_images, paste, read_rgb, split_items

    root = data / "composites"
    fgs = split_items(list_images(root / "foregrounds"), "val")
    bgs = split_items(list_images(root / "backgrounds"), "val")
    W, H = size
    for k in range(count):
        rng = np.random.default_rng(1000 + k)
        bg = cv2.resize(read_rgb(bgs[k % len(bgs)]), size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        rgba = cv2.cvtColor(cv2.imread(str(fgs[rng.integers(len(fgs))]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
        h0 = rng.uniform(0.12, 0.25) * H
        h1 = h0 * rng.uniform(0.8, 1.25)
        x0, x1 = rng.uniform(0.15, 0.85, 2) * W
        foot0, foot1 = rng.uniform(0.55, 0.95, 2) * H
        clip = []
        for t in range(frames):
            u = t / (frames - 1)
            h = round(h0 + (h1 - h0) * u)
            w = max(2, round(rgba.shape[1] * h / rgba.shape[0]))
            fg = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
            x = round(x0 + (x1 - x0) * u - w / 2)
            y = round(foot0 + (foot1 - foot0) * u - h)
            image, alpha = bg.copy(), np.zeros((H, W), np.float32)
            paste(image, alpha, fg[..., :3], fg[..., 3] / 255, x, y)
            clip.append((image.round().astype(np.uint8), alpha > 0.5))
        yield f"small-{k}", clip


def small_people(data: Path, predictor, count: int, batch_size: int) -> list[dict]:
    """Per-frame against tracked, each alone and with the default temporal median (its ms not counted)."""
    rows = []
    for name, clip in small_people_clips(data, count):
        frames = [Frame(i, rgb, i, Fraction(1, 30)) for i, (rgb, _) in enumerate(clip)]
        truth = [mask for _, mask in clip]
        for method, segmenter in (("per-frame", predictor), ("tracked", PersonTracker(predictor))):
            start = time.perf_counter()
            pairs = list(segment_frames(frames, segmenter, None, batch_size))
            seconds = time.perf_counter() - start
            rows.append(record(name, method, [a >= predictor.threshold for _, a in pairs], truth, seconds))
            smoothed = smooth(pairs, TemporalMedian(threshold=predictor.threshold))
            rows.append(record(name, method + "+median", [a >= predictor.threshold for _, a in smoothed], truth,
                               seconds))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        print(f"small people, mean over {len(mine)} clips: {method:16s} J {np.mean([r['J'] for r in mine]):.3f}  "
              f"flicker {np.mean([r['flicker'] for r in mine]):.5f}  "
              f"{np.mean([r['ms_per_frame'] for r in mine]):.0f} ms/frame")
    return rows


def make_clip(frames_dir: Path, size: tuple[int, int], path: Path, limit: int) -> Path:
    """The first `limit` frames resized to `size`, as a 30 fps H.264 mp4 (not timed)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for file in sorted(frames_dir.glob("*.jpg"))[:limit]:
            image = Image.open(file).convert("RGB").resize(size, Image.BILINEAR)
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode(None))
    return path


def speed(data: Path, predictor, limit: int, batch_size: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            clip = make_clip(data / "video" / "dance-twirl" / "frames", size, Path(tmp) / f"{label}.mp4", limit)
            summary = process_video(clip, Path(tmp) / f"{label}_out.mp4", predictor, temporal="median",
                                    batch_size=batch_size)
            rows.append({"size": label, "frames": summary.frames, "fps": summary.fps})
            print(f"end to end {label} ({size[0]}x{size[1]}): {summary.fps:.1f} frames/s "
                  f"over {summary.frames} frames", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint path or shipped model name (default: the shipped default)")
    parser.add_argument("--recurrent", help="a trained recurrent checkpoint to compare as well")
    parser.add_argument("--data", default="../shared/data", help="folder holding video/<seq>/{frames,masks}")
    parser.add_argument("--limit", type=int, help="frames per clip (default: all; the speed clips use 90)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--small", type=int, default=6, help="synthetic small-people clips (0 = none)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    predictor = personseg.load(args.model, device=args.device, refine=not args.no_refine)
    recurrent = None
    if args.recurrent:
        recurrent = personseg.load(args.recurrent, device=args.device, refine=not args.no_refine)
    print(f"model {args.model or 'default'}, {args.threads} threads, torch {torch.__version__}, device {args.device}, "
          f"refine {not args.no_refine}, batch {args.batch_size}, frames per clip {args.limit or 'all'}")
    results = {"quality": quality(data, predictor, recurrent, args.limit, args.batch_size)}
    if args.small:
        results["small_people"] = small_people(data, predictor, args.small, args.batch_size)
    if not args.skip_speed:
        results["speed"] = speed(data, predictor, args.limit or 90, args.batch_size)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
