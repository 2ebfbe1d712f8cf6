"""Speed of the numpy/OpenCV guided filter (`personseg.guided_filter`) step by step, against the same file
at an earlier git revision (by default the last one before it was made fast), in the same run.

At 600x800, 1280x720 and 1920x1080 (the first portrait of the portraits folder cropped to size, or a
blurred random picture when the data is missing), at the model size predict() uses (`--input-size`,
default `accurate`'s 384x216: 333x249 for 600x800, 216x384 for 720p and 1080p), it times

- area_downsample: the photo shrunk to the model's size (predict() makes its input and the filter's guide from it),
- coefficients: the solve at the model's size,
- apply_coefficients: the coefficients upsampled and applied at full size,
- filter: refine_alpha with the guide given, the guided-filter step of predict() (coefficients + apply),

with 2 and 1 OpenCV threads. Each repetition times the old and the new version of a step one after the
other (interleaved); the figures are medians. It also prints the largest |new - old| of the alpha.
Run it alone on the machine:

    flock /tmp/personseg-cpu.lock python benchmarks/guided_filter_speed.py [--baseline REV] [--runs 40]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
import types
from pathlib import Path

import cv2
import numpy as np

from personseg import guided_filter
from personseg.predict import model_size

REPO = Path(__file__).resolve().parents[1]
BASELINE = "1dc58ab299f7a7c31a249556bb9599dcdc1ce49e"  # guided_filter.py before the speed-up (issue 19)
PHOTO_SIZES = ((600, 800), (1280, 720), (1920, 1080))  # (width, height)
STEPS = ("area_downsample", "coefficients", "apply_coefficients", "filter")


def module_at(rev: str, path: str = "personseg/guided_filter.py") -> types.ModuleType:
    """The file `path` as it was at git revision `rev`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"guided_filter_{rev[:7]}")
    exec(compile(source, f"{rev[:7]}:{path}", "exec"), module.__dict__)
    return module


def photo(data: Path, width: int, height: int) -> np.ndarray:
    """A real portrait cropped to width x height, or a blurred random picture without the data."""
    if (data / "portraits" / "images").is_dir():
        from speed import sample_photo  # benchmarks/speed.py

        return sample_photo(data, width, height)
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


def person_probability(h: int, w: int) -> np.ndarray:
    """A stand-in for the model's low-resolution probability: a soft upright ellipse, (h, w) float32."""
    y, x = np.mgrid[:h, :w]
    inside = ((y / h - 0.6) / 0.45) ** 2 + ((x / w - 0.5) / 0.3) ** 2 < 1
    return cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 1.5)


def step_calls(gf: types.ModuleType, rgb: np.ndarray, prob: np.ndarray) -> dict:
    """The four timed calls of one implementation, on its own guide and coefficients."""
    h, w = prob.shape
    r = gf.default_radius(h, w)
    guide = gf.area_downsample(rgb, h, w)
    coef = gf.coefficients(guide, prob, r, 1e-5)
    return {"area_downsample": lambda: gf.area_downsample(rgb, h, w),
            "coefficients": lambda: gf.coefficients(guide, prob, r, 1e-5),
            "apply_coefficients": lambda: gf.apply_coefficients(rgb, coef),
            "filter": lambda: gf.refine_alpha(rgb, prob, guide_lr=guide)}


def time_steps(impls: dict, rgb: np.ndarray, prob: np.ndarray, runs: int) -> dict:
    """{(impl, step): median ms}, old and new timed alternately within each repetition."""
    calls = {name: step_calls(gf, rgb, prob) for name, gf in impls.items()}
    times = {(name, step): [] for name in impls for step in STEPS}
    for name in impls:  # warm-up: caches, scratch arrays, OpenCV's thread pool
        for call in calls[name].values():
            call()
    for _ in range(runs):
        for step in STEPS:
            for name in impls:
                start = time.perf_counter()
                calls[name][step]()
                times[name, step].append(time.perf_counter() - start)
    return {key: 1000 * float(np.median(t)) for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PERSONSEG_DATA", "../shared/data")))
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old guided_filter.py")
    parser.add_argument("--input-size", default="384x216", help="the model's pixel budget WxH (fast: 224x126)")
    parser.add_argument("--runs", type=int, default=40, help="interleaved repetitions per step")
    parser.add_argument("--threads", default="2,1", help="OpenCV thread counts to run with")
    args = parser.parse_args()
    input_size = tuple(int(v) for v in args.input_size.split("x"))
    impls = {"old": module_at(args.baseline), "new": guided_filter}

    print(f"guided filter, old = {args.baseline[:10]}, new = working tree; median ms of {args.runs} interleaved "
          f"runs; OpenCV {cv2.__version__}, numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}")
    print("| photo | model size | OpenCV threads | step | old ms | new ms | old / new |")
    print("|---|---|---:|---|---:|---:|---:|")
    for width, height in PHOTO_SIZES:
        rgb = photo(args.data, width, height)
        h, w = model_size(height, width, input_size)
        prob = person_probability(h, w)
        alphas = {name: gf.refine_alpha(rgb, prob) for name, gf in impls.items()}
        for threads in (int(t) for t in args.threads.split(",")):
            cv2.setNumThreads(threads)
            ms = time_steps(impls, rgb, prob, args.runs)
            for step in STEPS:
                old, new = ms["old", step], ms["new", step]
                print(f"| {width}x{height} | {w}x{h} | {threads} | {step} | {old:.2f} | {new:.2f} | {old / new:.1f} |")
        print(f"| {width}x{height} | {w}x{h} | | max abs(new - old) alpha: "
              f"{np.abs(alphas['new'] - alphas['old']).max():.1e} | | | |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
