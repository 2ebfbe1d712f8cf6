"""Speed. Two parts:

End to end, what a user gets (`--end-to-end`; no torch needed): predict() ms per photo of each shipped
model at 600x800, 1280x720 and 1920x1080 with its parts (resize + normalise, network on ONNX Runtime,
guided filter), the guided filter alone, and `personseg video --model fast` frames/s end to end (decode,
model, temporal median, blur, H.264 encode) on 270-frame H.264 clips made from the DAVIS frames at 854x480
and 1280x720.

    python benchmarks/speed.py --end-to-end [--threads 2] [--runs 30] [--video-frames 270]

The network table (default): every backend against eager PyTorch fp32 of the same model, size and
batch, measured in the same run (ratios > 1 are faster than eager). Numbers come from `personseg.bench`.

    python benchmarks/speed.py [MODEL...] [--threads 2] [--runs 20] [--sizes 320x180,native] [--batch 1,16]
    python benchmarks/speed.py unet_mobilenet_v3:alpha=0.3 --runs 3 --batch 1 --sizes 320x180   # a quick check

MODELs are as for `personseg bench` (checkpoints, shipped names, NAME:key=value with random weights);
the default is the shipped models, else the model zoo's architectures with random weights. Run it on
an otherwise idle machine: a busy CPU makes every ratio noise. --json keeps all numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from personseg.predict import WEIGHTS_DIR, shipped_models

REPO = Path(__file__).resolve().parents[1]
PHOTO_SIZES = ((600, 800), (1280, 720), (1920, 1080))  # (width, height)
VIDEO_SIZES = ((854, 480), (1280, 720))

ZOO = ["unet_mobilenet_v1:alpha=1.0", "unet_mobilenet_v2:alpha=1.0", "unet_mobilenet_v3:alpha=0.3",
       "unet_mobilenet_v3:alpha=1.0", "deeplabv3plus", "unet"]
BASELINE = "torch"


def default_models() -> list[str]:
    shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))  # the network table benchmarks checkpoints
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


def _median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def sample_photo(data: Path, width: int, height: int) -> np.ndarray:
    """A real portrait (first of the portraits folder) resized to cover width x height, centre-cropped."""
    import cv2

    from personseg.imageio import list_inputs, read_image

    rgb = read_image(list_inputs([str(data / "portraits" / "images")])[0])
    scale = max(width / rgb.shape[1], height / rgb.shape[0])
    rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale + 0.5), round(rgb.shape[0] * scale + 0.5)),
                     interpolation=cv2.INTER_AREA)
    y, x = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    return np.ascontiguousarray(rgb[y:y + height, x:x + width])


def end_to_end_photos(data: Path, threads: int | None, runs: int) -> list[dict]:
    import personseg
    from personseg.guided_filter import refine_alpha
    from personseg.predict import model_size, preprocess

    rows = []
    for name in shipped_models():
        seg = personseg.load(name, threads=threads)
        for tta in sorted({seg.tta, False}, reverse=True):
            seg.tta = tta
            for width, height in PHOTO_SIZES:
                rgb = sample_photo(data, width, height)
                size = model_size(height, width, seg.input_size)
                x = preprocess([rgb], size, seg.mean, seg.std)
                x = np.concatenate([x, x[..., ::-1]]) if tta else x
                prob, _, small = seg._forward([rgb], size)  # the guide predict() hands the filter
                rows.append({
                    "model": name, "precision": seg.info.get("precision"), "tta": tta, "size": [width, height],
                    "predict_ms": _median_ms(lambda: seg.predict(rgb), runs),
                    "preprocess_ms": _median_ms(lambda: preprocess([rgb], size, seg.mean, seg.std), runs),
                    "network_ms": _median_ms(lambda: seg.run(x), runs),
                    "guided_filter_ms": _median_ms(lambda: refine_alpha(rgb, prob[0], guide_lr=small[0]), runs),
                    "threads": seg.model.threads})
                print(rows[-1], file=sys.stderr)
    return rows


def make_clip(data: Path, path: Path, width: int, height: int, frames: int) -> Path:
    """An H.264 clip of `frames` frames at width x height from the DAVIS frames (clips one after another,
    each frame resized to cover and centre-cropped), 30 frames/s, as a phone or camera would give."""
    import av
    import cv2

    from personseg.imageio import list_inputs, read_image

    sources = [p for clip in sorted((data / "video").iterdir()) if (clip / "frames").is_dir()
               for p in list_inputs([str(clip / "frames")])]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"crf": "20", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = read_image(sources[i % len(sources)])
            scale = max(width / rgb.shape[1], height / rgb.shape[0])
            rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale + 0.5), round(rgb.shape[0] * scale + 0.5)),
                             interpolation=cv2.INTER_AREA)
            y, x = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[y:y + height, x:x + width]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def end_to_end_video(data: Path, frames: int, settings: list[dict]) -> list[dict]:
    """`personseg video CLIP -o OUT.mp4 --model fast` (defaults) frames/s, once per setting (load kwargs)."""
    import personseg
    from personseg.video import process_video

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in VIDEO_SIZES:
            clip = make_clip(data, Path(tmp) / f"clip{height}.mp4", width, height, frames)
            for setting in settings:
                predictor = personseg.load("fast", tta=False, **setting)
                out = Path(tmp) / "out.mp4"
                summary = process_video(clip, out, predictor, temporal="median", overwrite=True)
                rows.append({"size": [width, height], "frames": summary.frames, "fps": round(summary.fps, 1),
                             **setting, "ort_threads": predictor.model.threads})
                print(rows[-1], file=sys.stderr)
    return rows


def end_to_end(args) -> int:
    data = Path(args.data)
    result = {"cpu_cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}
    result["photos"] = end_to_end_photos(data, args.threads or None, args.runs)
    print("| model | TTA | size | predict() ms | resize+normalise | network (ORT) | guided filter |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in result["photos"]:
        print(f"| {r['model']} ({r['precision']}) | {'on' if r['tta'] else 'off'} | {r['size'][0]}x{r['size'][1]} | "
              f"{r['predict_ms']:.1f} | {r['preprocess_ms']:.1f} | {r['network_ms']:.1f} | {r['guided_filter_ms']:.1f} |")
    if args.video_frames:
        settings = [{"spinning": False}, {"spinning": True}] if args.compare_spinning else [{"spinning": False}]
        result["video"] = end_to_end_video(data, args.video_frames, settings)
        print("\n| video | frames | frames/s end to end | ORT threads | ORT spinning |\n|---|---:|---:|---:|---|")
        for r in result["video"]:
            print(f"| {r['size'][0]}x{r['size'][1]} | {r['frames']} | {r['fps']:.1f} | {r['ort_threads']} | "
                  f"{'on' if r['spinning'] else 'off'} |")
    print(f"\n{result['cpu_cores']} cores, load average {result['load_average'][0]:.1f} at the start")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--end-to-end", action="store_true",
                        help="predict() per photo, the guided filter and video frames/s (no torch)")
    parser.add_argument("--data", default=os.environ.get("PERSONSEG_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--video-frames", type=int, default=270, help="frames of each test clip (0: no video)")
    parser.add_argument("--compare-spinning", action="store_true", help="video also with ORT's spin-waiting on")
    parser.add_argument("models", nargs="*", help="default: the shipped models, else " + ", ".join(ZOO))
    parser.add_argument("--sizes", help="network table sizes (default: personseg bench's)")
    parser.add_argument("--batch", help="comma-separated batch sizes (default: personseg bench's)")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8", help="torch, onnx, onnx-int8, ...")
    parser.add_argument("--threads", type=int, default=0, help="default: torch's default")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--calib", help="calibrate int8 on these images (default: random inputs)")
    parser.add_argument("--json", help="write all numbers here")
    parser.add_argument("--full", action="store_true", help="also print personseg bench's full table")
    args = parser.parse_args()
    if args.end_to_end:
        return end_to_end(args)
    from personseg.bench import BACKENDS, DEFAULT_BATCHES, DEFAULT_SIZES, benchmark, markdown_table

    backends = [b.strip() for b in args.backends.split(",")]
    if BASELINE not in backends:
        backends.insert(0, BASELINE)  # the ratios need it
    args.sizes, args.batch = args.sizes or DEFAULT_SIZES, args.batch or DEFAULT_BATCHES
    unknown = [b for b in args.backends.split(",") if b.strip() not in BACKENDS]
    if unknown:
        parser.error(f"--backends {','.join(unknown)}: choose from {', '.join(BACKENDS)}")
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
