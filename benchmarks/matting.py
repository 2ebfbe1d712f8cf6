"""Matting-quality edges (issue 15): the trained deep guided filter against the analytic one on the same
model output, and the cut-out's colour fringe with and without foreground estimation.

    flock /tmp/personseg-cpu.lock python benchmarks/matting.py --data ../shared/data \
        | tee training_logs/refiner/benchmark.txt

1. Validation composites (refiner_train.MattingScenes, validation cut-outs on validation backgrounds,
   seed 99, not the training run's checkpoint-selection seed 1234): Rhemann et al. errors (personseg.matting:
   SAD, MSE, gradient, connectivity) over the whole picture and in the edge band (the ground truth's
   fractional pixels grown by 3: the matting trimap's unknown area), bilinear / analytic / deep.
2. Real validation folders (index % 10 == 9; the held-back split is not read): IoU and boundary F
   (personseg.evaluate), analytic vs deep, the model run once per photo.
3. ONNX Runtime cost of each refinement at 1280x720 and 1920x1080, 2 threads, median of --repeat runs,
   on a real photo resized; foreground estimation (Blur-Fusion) and pymatting's estimate_foreground_ml.
4. Colour fringe on the composites: mean colour error (0-255) in the edge band of the foreground the
   cut-out carries against the composite's true foreground, with the photo's colours (before) and with
   the estimated ones (after), under the true alpha and under the deep refiner's alpha.
"""
import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg import matting  # noqa: E402
from personseg.evaluate import evaluate_folders  # noqa: E402
from personseg.guided_filter import refine_alpha  # noqa: E402
from personseg.imageio import read_image  # noqa: E402
from personseg.predict import load  # noqa: E402
from personseg.refiner_train import MattingScenes, model_probability  # noqa: E402

FOLDERS = ("portraits", "ccp", "hsd", "coco", "pennfudan")
METHODS = ("bilinear", "guided", "deep")


def upsample(predictor, method: str, rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
    if method == "deep":
        return predictor.refiner(rgb, prob)
    if method == "guided":
        return refine_alpha(rgb, prob)
    return np.clip(cv2.resize(prob, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR), 0, 1)


def composites(predictor, data: Path, count: int, seed: int = 99) -> list[tuple]:
    scenes = MattingScenes(data, "val")
    out = []
    for i in range(count):
        image, alpha, fg = scenes.render(seed * 1_000_003 + i, with_foreground=True)
        out.append((image, alpha, fg, model_probability(predictor, image)))
    return out


def matting_table(predictor, scenes: list[tuple]) -> None:
    print(f"\n1. Matting errors, {len(scenes)} validation composites (mean per picture; SAD, grad, conn / 1000)")
    for where in ("whole", "band"):
        means = {}
        for method in METHODS:
            rows = []
            for image, alpha, _, prob in scenes:
                region = matting.edge_band(alpha) if where == "band" else None
                rows.append(matting.matting_errors(upsample(predictor, method, image, prob), alpha, region))
            means[method] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(f"{where:6s} {'method':9s} {'SAD':>9s} {'MSE':>9s} {'grad':>9s} {'conn':>9s}")
        for method in METHODS:
            m = means[method]
            print(f"{'':6s} {method:9s} {m['sad']:9.3f} {m['mse']:9.5f} {m['grad']:9.3f} {m['conn']:9.3f}")
        ratio = {k: means["deep"][k] / means["guided"][k] for k in means["deep"]}
        print(f"{'':6s} {'deep/gf':9s} " + " ".join(f"{ratio[k]:9.3f}" for k in ("sad", "mse", "grad", "conn")))


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


def folders_table(predictor, data: Path, limit: int | None) -> None:
    print("\n2. Real validation folders: IoU and boundary F (pixel counts summed per folder)")
    cache: dict = {}
    results = {m: evaluate_folders(Cached(predictor, m, cache), [data / f for f in FOLDERS], "val", limit)
               for m in ("guided", "deep")}
    print(f"{'folder':10s} {'n':>4s} | {'IoU gf':>7s} {'IoU deep':>8s} | {'F gf':>7s} {'F deep':>7s}")
    for name in list(results["guided"]["per_folder"]) + ["overall"]:
        g = results["guided"]["overall" if name == "overall" else "per_folder"]
        d = results["deep"]["overall" if name == "overall" else "per_folder"]
        g, d = (g if name == "overall" else g[name]), (d if name == "overall" else d[name])
        print(f"{name:10s} {g['images']:4d} | {g['iou']:7.4f} {d['iou']:8.4f} | {g['boundary_f']:7.4f} "
              f"{d['boundary_f']:7.4f}")


def timing_table(predictor, data: Path, repeat: int) -> None:
    print(f"\n3. Cost on ONNX Runtime / OpenCV, 2 threads, median of {repeat} (ms)")
    photo = read_image(sorted((data / "portraits/images").iterdir())[9])
    cv2.setNumThreads(2)
    for W, H in ((1280, 720), (1920, 1080)):
        rgb = cv2.resize(photo, (W, H), interpolation=cv2.INTER_LINEAR)
        prob = model_probability(predictor, rgb)
        runs: dict[str, list[float]] = {m: [] for m in METHODS}
        for i in range(repeat + 1):  # methods interleaved, so a busy spell of the shared machine hits all
            for method in METHODS:
                t = time.perf_counter()
                upsample(predictor, method, rgb, prob)
                if i:  # the first round warms up
                    runs[method].append((time.perf_counter() - t) * 1000)
        times = {m: statistics.median(r) for m, r in runs.items()}
        print(f"{W}x{H} (model {prob.shape[1]}x{prob.shape[0]}): " + ", ".join(f"{m} {t:.2f}" for m, t in times.items())
              + f"; deep - guided = {times['deep'] - times['guided']:+.2f} ms")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="accurate")
    parser.add_argument("--composites", type=int, default=60)
    parser.add_argument("--limit", type=int, help="images per real folder")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", choices=("matting", "folders", "timing", "fringe"), action="append")
    args = parser.parse_args()
    predictor = load(args.model, refine="deep", threads=2)
    print(f"model {args.model} (tta {predictor.tta}), refiner {Path(predictor.refiner.path).name}")
    only = set(args.only or ("matting", "folders", "timing", "fringe"))
    scenes = composites(predictor, args.data, args.composites) if only & {"matting", "fringe"} else []
    if "matting" in only:
        matting_table(predictor, scenes)
    if "folders" in only:
        folders_table(predictor, args.data, args.limit)
    if "timing" in only:
        timing_table(predictor, args.data, args.repeat)
    if "fringe" in only:
        fringe_table(predictor, scenes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
