"""Matting-quality edges (issue 15): the trained deep guided filter against the analytic one on the same
model output, and the cut-out's colour fringe with and without foreground estimation.

    flock /tmp/personseg-cpu.lock python benchmarks/matting.py --data ../shared/data \
        | tee training_logs/refiner/benchmark.txt

1. Validation composites (refiner_train.MattingScenes, validation cut-outs on validation backgrounds,
   seed 99, not the training run's checkpoint-selection seed 1234): Rhemann et al. errors (personseg.matting:
   SAD, MSE, gradient, connectivity) over the whole picture and in the edge band (the ground truth's
   fractional pixels grown by 3: the matting trimap's unknown area), bilinear / analytic / deep; then the
   whole picture's MSE and gradient error split by zone (`zones`): the edge band, the segmenter's own
   errors away from it (where the analytic alpha is off by more than 0.3, grown by 4 pixels: no filter of
   the model's output can fix those) and the rest.
2. Real validation folders (index % 10 == 9; --split holdout reads index % 10 == 4 instead, here and in
   sections 1 and 4): IoU and boundary F
   (personseg.evaluate), analytic vs deep, the model run once per photo.
3. ONNX Runtime cost of each refinement at 1280x720 and 1920x1080, 2 threads, median of --repeat runs,
   on a real photo resized; foreground estimation (Blur-Fusion) and pymatting's estimate_foreground_ml.
4. Colour fringe on the composites: mean colour error (0-255) in the edge band of the foreground the
   cut-out carries against the composite's true foreground, with the photo's colours (before) and with
   the estimated ones (after), under the true alpha and under the deep refiner's alpha.
5. Moving composite clips (--only clips; MattingScenes.clip, validation cut-outs gliding over validation
   backgrounds, seed 77, 12 clips x 16 frames): dtSSD (temporal coherence), MSE, SAD (personseg.matting
   .clip_errors) and mask flicker (personseg.metrics.video_metrics) of bilinear / analytic / deep, each with
   the video's temporal filter off, applied before upsampling (to the model's low-resolution probability)
   and after (to the full-resolution alpha, where `personseg video` applies it today: segment_frames
   smooths predict_batch's alphas); ms per frame of upsampling + filter, the variants interleaved per clip.

    flock /tmp/personseg-cpu.lock python benchmarks/matting.py --only clips | tee training_logs/refiner/clips.txt
"""
import argparse
import hashlib
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg import matting  # noqa: E402
from personseg.evaluate import evaluate_folders  # noqa: E402
from personseg.guided_filter import refine_alpha  # noqa: E402
from personseg.imageio import read_image  # noqa: E402
from personseg.metrics import video_metrics  # noqa: E402
from personseg.predict import load  # noqa: E402
from personseg.refiner import DeepRefiner  # noqa: E402
from personseg.refiner_train import MattingScenes, model_probability  # noqa: E402
from personseg.video import Frame, make_temporal  # noqa: E402

FOLDERS = ("portraits", "ccp", "hsd", "coco", "pennfudan")
METHODS = ("bilinear", "guided", "deep")


def upsample(predictor, method: str, rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
    if method == "deep":
        return predictor.refiner(rgb, prob)
    if method == "guided":
        return refine_alpha(rgb, prob)
    return np.clip(cv2.resize(prob, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR), 0, 1)


def composites(predictor, data: Path, count: int, seed: int = 99, split: str = "val") -> list[tuple]:
    scenes = MattingScenes(data, split)
    out = []
    for i in range(count):
        image, alpha, fg = scenes.render(seed * 1_000_003 + i, with_foreground=True)
        out.append((image, alpha, fg, model_probability(predictor, image)))
    return out


def zones(alpha: np.ndarray, analytic: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint (H, W) bool zones of one composite that cover it: "band" (matting.edge_band of the true
    alpha), "model error" (the analytic alpha more than 0.3 off the truth, grown by 4 pixels, outside the
    band: the segmenter's mistakes) and "rest"."""
    band = matting.edge_band(alpha)
    off = cv2.dilate((np.abs(analytic - alpha) > 0.3).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    return {"band": band, "model error": off & ~band, "rest": ~off & ~band}


def matting_table(predictor, scenes: list[tuple]) -> None:
    """Section 1: each method's alpha computed once per composite, scored over the whole picture, in the edge
    band, and (analytic and deep) split by `zones` into each zone's share of the whole MSE and gradient error."""
    errors = {(where, m): [] for where in ("whole", "band") for m in METHODS}
    shares = {(name, m): np.zeros(3) for name in ("band", "model error", "rest") for m in ("guided", "deep")}
    for image, alpha, _, prob in scenes:
        preds = {m: upsample(predictor, m, image, prob) for m in METHODS}
        parts = zones(alpha, preds["guided"])
        for m, pred in preds.items():
            errors[("whole", m)].append(matting.matting_errors(pred, alpha))
            errors[("band", m)].append(matting.matting_errors(pred, alpha, parts["band"]))
            if m == "bilinear":
                continue
            for name, region in parts.items():
                shares[(name, m)] += [region.mean(), matting.mse(pred, alpha, region) * region.mean(),
                                      matting.gradient_error(pred, alpha, region)]
    print(f"\n1. Matting errors, {len(scenes)} composites (of --split) (mean per picture; SAD, grad, conn / 1000)")
    for where in ("whole", "band"):
        means = {m: {k: float(np.mean([r[k] for r in errors[(where, m)]])) for k in errors[(where, m)][0]}
                 for m in METHODS}
        print(f"{where:6s} {'method':9s} {'SAD':>9s} {'MSE':>9s} {'grad':>9s} {'conn':>9s}")
        for method in METHODS:
            m = means[method]
            print(f"{'':6s} {method:9s} {m['sad']:9.3f} {m['mse']:9.5f} {m['grad']:9.3f} {m['conn']:9.3f}")
        ratio = {k: means["deep"][k] / means["guided"][k] for k in means["deep"]}
        print(f"{'':6s} {'deep/gf':9s} " + " ".join(f"{ratio[k]:9.3f}" for k in ("sad", "mse", "grad", "conn")))
    print("\n   Whole picture by zone (mean per picture; each zone's share of MSE and gradient error)")
    print(f"{'zone':12s} {'area':>6s} | {'MSE gf':>8s} {'MSE deep':>8s} | {'grad gf':>8s} {'grad deep':>9s}")
    for name in ("band", "model error", "rest"):
        g, d = shares[(name, "guided")] / len(scenes), shares[(name, "deep")] / len(scenes)
        print(f"{name:12s} {g[0]:6.3f} | {g[1]:8.5f} {d[1]:8.5f} | {g[2]:8.3f} {d[2]:9.3f}")


class Cached:
    """A predictor-like object for evaluate_folders: the model's probability computed once per photo
    (cached by its bytes) and brought to full size by `method`."""

    def __init__(self, predictor, method: str, cache: dict):
        self.predictor, self.method, self.cache = predictor, method, cache
        self.threshold = predictor.threshold

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(rgb.tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = model_probability(self.predictor, rgb)
        return upsample(self.predictor, self.method, rgb, self.cache[key])


def folders_table(predictor, data: Path, limit: int | None, split: str = "val") -> None:
    print(f"\n2. Real {split} folders: IoU and boundary F (pixel counts summed per folder)")
    cache: dict = {}
    results = {m: evaluate_folders(Cached(predictor, m, cache), [data / f for f in FOLDERS], split, limit)
               for m in ("guided", "deep")}
    print(f"{'folder':10s} {'n':>4s} | {'IoU gf':>7s} {'IoU deep':>8s} | {'F gf':>7s} {'F deep':>7s}")
    for name in list(results["guided"]["per_folder"]) + ["overall"]:
        g = results["guided"]["overall" if name == "overall" else "per_folder"]
        d = results["deep"]["overall" if name == "overall" else "per_folder"]
        g, d = (g if name == "overall" else g[name]), (d if name == "overall" else d[name])
        print(f"{name:10s} {g['images']:4d} | {g['iou']:7.4f} {d['iou']:8.4f} | {g['boundary_f']:7.4f} "
              f"{d['boundary_f']:7.4f}")


def timing_table(predictor, data: Path, repeat: int, others: tuple[DeepRefiner, ...] = ()) -> None:
    """The upsampling methods' time, and that of `others` (more refiner files, "deep:NAME") in the same run."""
    print(f"\n3. Cost on ONNX Runtime / OpenCV, 2 threads, median of {repeat} (ms)")
    photo = read_image(sorted((data / "portraits/images").iterdir())[9])
    cv2.setNumThreads(2)
    steps = {m: (lambda rgb, prob, m=m: upsample(predictor, m, rgb, prob)) for m in METHODS}
    steps.update({f"deep:{Path(r.path).parent.name}/{Path(r.path).name}": r for r in others})
    for W, H in ((1280, 720), (1920, 1080)):
        rgb = cv2.resize(photo, (W, H), interpolation=cv2.INTER_LINEAR)
        prob = model_probability(predictor, rgb)
        runs: dict[str, list[float]] = {m: [] for m in steps}
        for i in range(repeat + 1):  # methods interleaved, so a busy spell of the shared machine hits all
            for method, step in steps.items():
                t = time.perf_counter()
                step(rgb, prob)
                if i:  # the first round warms up
                    runs[method].append((time.perf_counter() - t) * 1000)
        times = {m: statistics.median(r) for m, r in runs.items()}
        print(f"{W}x{H} (model {prob.shape[1]}x{prob.shape[0]}): " + ", ".join(f"{m} {t:.2f}" for m, t in times.items())
              + "; " + ", ".join(f"{m} - guided = {t - times['guided']:+.2f} ms" for m, t in times.items()
                                 if m.startswith("deep")))
    rgb = cv2.resize(photo, (1280, 720), interpolation=cv2.INTER_LINEAR)
    alpha = predictor.refiner(rgb, model_probability(predictor, rgb))
    runs = []
    for _ in range(max(3, repeat // 3)):
        t = time.perf_counter()
        matting.estimate_foreground(rgb, alpha)
        runs.append((time.perf_counter() - t) * 1000)
    print(f"1280x720 foreground estimation, Blur-Fusion (OpenCV): {statistics.median(runs):.1f} ms")
    try:
        from pymatting import estimate_foreground_ml
    except ImportError:
        print("pymatting not installed: estimate_foreground_ml not timed")
        return
    image = rgb / 255.0
    estimate_foreground_ml(image[:64, :64], alpha[:64, :64].astype(np.float64))  # numba compiles here
    t = time.perf_counter()
    estimate_foreground_ml(image, alpha.astype(np.float64))
    print(f"1280x720 foreground estimation, pymatting estimate_foreground_ml: {(time.perf_counter() - t) * 1000:.0f} ms "
          "(after compilation; numba's threads)")


def fringe_table(predictor, scenes: list[tuple]) -> None:
    print("\n4. Colour fringe where the true alpha is 0.05-0.95 (0-255, RGB mean): |F_cutout - F_true|, and the"
          "\n   rim a pasted cut-out shows, alpha |F_cutout - F_true| (its error on any new background)")
    for name in ("true alpha", "deep alpha"):
        err = {k: [] for k in ("F before", "F after", "rim before", "rim after")}
        for image, alpha, fg, prob in scenes:
            a = alpha if name == "true alpha" else predictor.refiner(image, prob)
            band = (alpha > 0.05) & (alpha < 0.95)
            for when, colours in (("before", image.astype(np.float32)),
                                  ("after", matting.estimate_foreground(image, a).astype(np.float32))):
                diff = np.abs(colours - fg)
                err[f"F {when}"].append(diff[band].mean())
                err[f"rim {when}"].append((diff * a[..., None])[band].mean())
        m = {k: float(np.mean(v)) for k, v in err.items()}
        print(f"{name}: F photo {m['F before']:.2f} -> estimated {m['F after']:.2f} "
              f"(ratio {m['F after'] / m['F before']:.3f}); rim {m['rim before']:.2f} -> {m['rim after']:.2f} "
              f"(ratio {m['rim after'] / m['rim before']:.3f})")


ORDERS = ("off", "before", "after")


def temporal_run(predictor, method: str, mode: str, order: str, images: np.ndarray,
                 probs: list) -> tuple[np.ndarray, float]:
    """A clip's alphas (T, H, W) and the seconds its temporal filter took: each frame's low-resolution
    probability upsampled by `method`, with a fresh temporal filter `mode` (make_temporal, its defaults)
    off, before the upsampling or after it."""
    temporal = None if order == "off" else make_temporal(mode, predictor.threshold)
    frames = [Frame(t, image, t, Fraction(1, 30)) for t, image in enumerate(images)]
    alphas: list = [None] * len(frames)
    seconds = 0.0

    def filtered(call, *args) -> list:
        nonlocal seconds
        t = time.perf_counter()
        done = call(*args)
        seconds += time.perf_counter() - t
        return done

    def finish(done) -> None:  # what the filter gave back: (frame, filtered) pairs, in order
        for frame, x in done:
            alphas[frame.index] = upsample(predictor, method, frame.rgb, x) if order == "before" else x

    for frame, prob in zip(frames, probs):
        if order == "off":
            alphas[frame.index] = upsample(predictor, method, frame.rgb, prob)
        elif order == "before":
            finish(filtered(temporal.push, frame, prob))
        else:
            finish(filtered(temporal.push, frame, upsample(predictor, method, frame.rgb, prob)))
    if temporal is not None:
        finish(filtered(temporal.flush))
    return np.stack(alphas), seconds


def clips_table(predictor, data: Path, count: int, frames: int, seed: int = 77) -> None:
    cv2.setNumThreads(2)
    scenes = MattingScenes(data, "val")
    modes = ("median", "ema")  # personseg video's default (TemporalMedian), and the camera's (TemporalFilter)
    variants = [(m, "none", "off") for m in METHODS] + [(m, mode, order) for m in METHODS for mode in modes
                                                          for order in ORDERS[1:]]
    rows: dict[tuple, list[dict]] = {v: [] for v in variants}
    sizes, model_ms = [], []
    for c in range(count):
        images, truth = scenes.clip(seed * 1_000_003 + c, frames)
        probs = []
        for image in images:
            t = time.perf_counter()
            probs.append(predictor.regions(model_probability(predictor, image), predictor.threshold))
            model_ms.append((time.perf_counter() - t) * 1000)
        sizes.append((images.shape[1] * images.shape[2], probs[0].size))
        order = variants[c % len(variants):] + variants[:c % len(variants)]  # rotated: no variant always first
        for v in order:
            t = time.perf_counter()
            alphas, filter_seconds = temporal_run(predictor, *v, images, probs)
            ms = (time.perf_counter() - t) * 1000 / frames
            errors = matting.clip_errors(alphas, truth)
            errors["flicker"] = video_metrics(alphas >= predictor.threshold, truth >= 0.5)["flicker"]
            rows[v].append({**errors, "ms": ms, "filter_ms": filter_seconds * 1000 / frames})
    pixels, low = (statistics.median(n) for n in zip(*sizes))
    print(f"\n5. Moving composite clips: {count} clips x {frames} frames (validation cut-outs over validation "
          f"backgrounds, seed {seed}; median {pixels / 1e6:.2f} MP a frame, the model's probability {low:.0f} px;"
          f"\n   the model {statistics.median(model_ms):.1f} ms a frame, not counted below)."
          "\n   Mean over clips; dtSSD x100 (as RVM prints it), MSE x1000, SAD / 1000 per frame; flicker: share"
          "\n   of steady true-mask pixels whose predicted mask flips; ms: upsampling + filter a frame, and the filter"
          "\n   alone (filter ms), medians over clips.")
    print(f"{'upsampling':10s} {'temporal':8s} {'order':7s} {'dtSSD':>7s} {'MSE':>7s} {'SAD':>7s} {'flicker':>8s} "
          f"{'ms':>6s} {'filter ms':>9s}")
    means = {}
    for v in variants:
        m = {k: float(np.mean([r[k] for r in rows[v]])) for k in ("dtssd", "mse", "sad", "flicker")}
        m["ms"] = statistics.median(r["ms"] for r in rows[v])
        m["filter_ms"] = statistics.median(r["filter_ms"] for r in rows[v])
        means[v] = m
        print(f"{v[0]:10s} {v[1]:8s} {v[2]:7s} {m['dtssd'] * 100:7.3f} {m['mse'] * 1000:7.3f} {m['sad']:7.3f} "
              f"{m['flicker']:8.5f} {m['ms']:6.1f} {m['filter_ms']:9.2f}")
    print("before vs after, clips where before is lower (dtSSD, MSE):")
    for m in METHODS:
        for mode in modes:
            b, a = rows[(m, mode, "before")], rows[(m, mode, "after")]
            wins = {k: sum(x[k] < y[k] for x, y in zip(b, a)) for k in ("dtssd", "mse")}
            cost = means[(m, mode, "before")]["filter_ms"] - means[(m, mode, "after")]["filter_ms"]
            print(f"  {m:9s} {mode:7s} dtSSD {wins['dtssd']}/{count}, MSE {wins['mse']}/{count}; "
                  f"filter ms before - after {cost:+.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="accurate")
    parser.add_argument("--composites", type=int, default=60)
    parser.add_argument("--split", choices=("val", "holdout"), default="val",
                        help="cut-outs, backgrounds and real photos of sections 1, 2 and 4 (default: val; holdout "
                             "for a shipped refiner's final figures, never for choosing one)")
    parser.add_argument("--limit", type=int, help="images per real folder")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--clips", type=int, default=12, help="moving composite clips (section 5)")
    parser.add_argument("--frames", type=int, default=16, help="frames a clip")
    parser.add_argument("--only", choices=("matting", "folders", "timing", "fringe", "clips"), action="append",
                        help="sections to run (default: all)")
    parser.add_argument("--refiner", type=Path, metavar="ONNX",
                        help="a refiner file to measure instead of the one shipped beside --model (one that "
                             "scripts/train_refiner.py wrote for the same model)")
    parser.add_argument("--also", type=Path, metavar="ONNX", action="append", default=[],
                        help="timing only: another refiner file timed in the same run (repeatable)")
    args = parser.parse_args()
    predictor = load(args.model, refine="deep", threads=2)
    if args.refiner:
        predictor.refiner = DeepRefiner(args.refiner, threads=2)
    print(f"model {args.model} (tta {predictor.tta}), refiner {Path(predictor.refiner.path).name}")
    only = set(args.only or ("matting", "folders", "timing", "fringe", "clips"))
    print(f"split {args.split}")
    scenes = composites(predictor, args.data, args.composites, split=args.split) if only & {"matting", "fringe"} else []
    if "matting" in only:
        matting_table(predictor, scenes)
    if "folders" in only:
        folders_table(predictor, args.data, args.limit, args.split)
    if "timing" in only:
        timing_table(predictor, args.data, args.repeat, tuple(DeepRefiner(p, threads=2) for p in args.also))
    if "fringe" in only:
        fringe_table(predictor, scenes)
    if "clips" in only:
        clips_table(predictor, args.data, args.clips, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
