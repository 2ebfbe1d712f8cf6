"""Does guided-filter upsampling give better boundaries than bilinear upsampling?

Ground-truth degradation experiment (no model): each ground-truth mask is area-downsampled to a
budget of 320*180 pixels (aspect kept, never upsampled), as a stand-in for a low-resolution model
output, then brought back to full resolution (a) bilinearly, (b) by `refine_alpha` with the photo as
guide, and thresholded at 0.5. Both are scored against the full-resolution ground truth:

- Boundary IoU (Cheng et al., CVPR 2021): IoU of the bands of G and P within d of their own contour,
  d = 1% of the image diagonal (Cheng et al. use 2%; tighter here since the errors are a few pixels).
- Boundary F (DAVIS, Perazzi et al. 2016): precision / recall of contour pixels lying within
  ceil(0.008 * diagonal) of the other mask's contour, F = 2PR / (P + R).
- Mask IoU, for reference.

A contour pixel is a mask pixel with a 4-neighbour background pixel; the image border is not a contour.
Counts (intersections, unions, matched contour pixels) are summed over a folder's images, then reduced
once, so large images weigh more. Images are `--limit` evenly spaced files per folder; hsd masks that
are not the image's size are resized to it (nearest).

`--sweep` tunes refine_alpha's defaults on a disjoint set of files (the ones half-way between the
evaluated ones): radius rule r = max(1, round(min(h, w) / K)) at low resolution, and eps.
Result (60 files per folder, see benchmarks/README.md): K = 180 (r = 1 at 320x180) and eps = 1e-5
were best with and without --blur; larger r is worse, smaller eps better, 1e-6 ties with 1e-5.

    python benchmarks/guided_filter_boundary.py --limit 60 [--sweep]

`--baseline REV` also runs refine_alpha as it was at git revision REV on the same low-res masks and
prints both side by side with the largest alpha difference and how many pixels cross 0.5 differently
(to check that a faster filter gives the same masks: benchmarks/guided_filter_speed.py).
"""

import argparse
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from personseg.guided_filter import refine_alpha

FOLDERS = ["portraits", "ccp", "hsd"]
BUDGET = 320 * 180
COUNTS = ["biou_inter", "biou_union", "f_tp_pred", "f_pred", "f_tp_gt", "f_gt", "inter", "union"]


def load_pairs(data: Path, folder: str, limit: int, offset: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """`limit` evenly spaced (image RGB uint8 (H, W, 3), mask bool (H, W)) pairs.

    offset in [0, 1) shifts the picks by that fraction of the step (0.5: the files in between).
    """
    masks = sorted((data / folder / "masks").glob("*.png"))
    idx = sorted({int((i + offset) * len(masks) / limit) for i in range(min(limit, len(masks)))})
    resized, pairs = 0, []
    for m in (masks[i] for i in idx):
        image = cv2.cvtColor(cv2.imread(str(data / folder / "images" / f"{m.stem}.jpg")), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            resized += 1
        pairs.append((image, mask > 127))
    if resized:
        print(f"{folder}: resized {resized} masks to their image's size (nearest)")
    return pairs


def low_res_size(h: int, w: int) -> tuple[int, int]:
    """(h, w) scaled to about BUDGET pixels, aspect kept, never larger than (h, w)."""
    s = min(1.0, math.sqrt(BUDGET / (h * w)))
    return max(1, round(h * s)), max(1, round(w * s))


def contour(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a background 4-neighbour: bool (H, W). erode keeps the image border."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return mask & ~cv2.erode(mask.astype(np.uint8), cross).astype(bool)


def distance_to(points: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of points: float32 (H, W)."""
    return cv2.distanceTransform((~points).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def score(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Boundary IoU, boundary F and mask IoU counts of bool (H, W) masks."""
    diag = math.hypot(*gt.shape)
    cp, cg = contour(pred), contour(gt)
    dp, dg = distance_to(cp), distance_to(cg)
    band_p, band_g = pred & (dp <= 0.01 * diag), gt & (dg <= 0.01 * diag)
    tol = math.ceil(0.008 * diag)
    return {"biou_inter": int((band_p & band_g).sum()), "biou_union": int((band_p | band_g).sum()),
            "f_tp_pred": int((cp & (dg <= tol)).sum()), "f_pred": int(cp.sum()),
            "f_tp_gt": int((cg & (dp <= tol)).sum()), "f_gt": int(cg.sum()),
            "inter": int((pred & gt).sum()), "union": int((pred | gt).sum())}


def reduce(c: dict[str, int]) -> dict[str, float]:
    """Summed counts -> boundary IoU, boundary F, mask IoU."""
    p, r = c["f_tp_pred"] / max(c["f_pred"], 1), c["f_tp_gt"] / max(c["f_gt"], 1)
    return {"biou": c["biou_inter"] / max(c["biou_union"], 1), "f": 2 * p * r / max(p + r, 1e-12),
            "iou": c["inter"] / max(c["union"], 1)}


def evaluate(pairs, methods, blur: float = 0.0) -> dict[str, dict[str, int]]:
    """Summed counts per method name; methods map name -> f(image, alpha_lr) -> alpha (H, W).

    blur > 0 also Gaussian-blurs the low-res alpha (sigma in low-res pixels): a softer, less exact
    stand-in for a model's output, whose boundary position is no longer encoded to sub-pixel accuracy.
    """
    totals = {name: dict.fromkeys(COUNTS, 0) for name in methods}
    for image, gt in pairs:
        h, w = low_res_size(*gt.shape)
        alpha_lr = cv2.resize(gt.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        if blur > 0:
            alpha_lr = cv2.GaussianBlur(alpha_lr, (0, 0), blur)
        for name, upsample in methods.items():
            for k, v in score(upsample(image, alpha_lr) > 0.5, gt).items():
                totals[name][k] += v
    return totals


def bilinear(image: np.ndarray, alpha_lr: np.ndarray) -> np.ndarray:
    return cv2.resize(alpha_lr, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)


def refine_with(k: int, eps: float):
    """refine_alpha with the radius rule r = max(1, round(min(h, w) / k)) and this eps."""
    return lambda image, alpha_lr: refine_alpha(
        image, alpha_lr, r=max(1, round(min(alpha_lr.shape) / k)), eps=eps)


def sweep(data: Path, limit: int, blur: float) -> None:
    """Pooled boundary metrics over a grid of radius rules and eps, on files disjoint from the evaluation."""
    pairs = [p for folder in FOLDERS for p in load_pairs(data, folder, limit, offset=0.5)]
    methods = {"bilinear": bilinear}
    for k in [180, 90, 45]:
        for eps in [1e-3, 1e-4, 1e-5, 1e-6]:
            methods[f"K={k} eps={eps:g}"] = refine_with(k, eps)
    print(f"\nSweep on {len(pairs)} tuning images (disjoint from the evaluation), pooled; "
          "r = max(1, round(min(h, w) / K)) at low resolution")
    print(f"{'method':<20} {'BIoU':>7} {'F':>7} {'IoU':>7}")
    for name, counts in evaluate(pairs, methods, blur).items():
        m = reduce(counts)
        print(f"{name:<20} {m['biou']:7.4f} {m['f']:7.4f} {m['iou']:7.4f}")


def time_refine(repeats: int = 20) -> tuple[float, float]:
    """(median, best) milliseconds of refine_alpha on a 1920x1080 image with a 320x180 alpha."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    alpha = rng.random((180, 320), dtype=np.float32)
    refine_alpha(image, alpha)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        refine_alpha(image, alpha)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), 1000 * min(times)


def compare_baseline(data: Path, limit: int, blur: float, rev: str) -> None:
    """Boundary IoU, boundary F and IoU of refine_alpha now and at git revision `rev`, per folder, with the
    largest |alpha now - alpha then| and the pixels on different sides of 0.5."""
    from guided_filter_speed import module_at  # benchmarks/guided_filter_speed.py

    methods = {"now": refine_alpha, rev[:10]: module_at(rev).refine_alpha}
    diffs = {"max": 0.0, "flipped": 0, "pixels": 0}

    def differ(image: np.ndarray, alpha_lr: np.ndarray) -> np.ndarray:  # scored like bilinear; counts the rest
        now, then = (f(image, alpha_lr) for f in methods.values())
        diffs["max"] = max(diffs["max"], float(np.abs(now - then).max()))
        diffs["flipped"] += int(((now > 0.5) != (then > 0.5)).sum())
        diffs["pixels"] += now.size
        return now

    print(f"refine_alpha now vs at {rev[:10]}; low-res budget {BUDGET} px, blur sigma {blur:g}")
    print(f"{'folder':<10} {'n':>4} | {'BIoU now':>9} {'BIoU then':>9} | {'F now':>7} {'F then':>7} | "
          f"{'IoU now':>7} {'IoU then':>8}")
    for folder in FOLDERS:
        pairs = load_pairs(data, folder, limit, offset=0.0)
        totals = evaluate(pairs, dict(methods, check=differ), blur)
        a, b = reduce(totals["now"]), reduce(totals[rev[:10]])
        print(f"{folder:<10} {len(pairs):>4} | {a['biou']:9.4f} {b['biou']:9.4f} | {a['f']:7.4f} {b['f']:7.4f} | "
              f"{a['iou']:7.4f} {b['iou']:8.4f}")
    print(f"largest |alpha now - alpha then| {diffs['max']:.1e}; pixels on different sides of 0.5: "
          f"{diffs['flipped']} of {diffs['pixels']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("PERSONSEG_DATA", "../shared/data")))
    parser.add_argument("--limit", type=int, default=60, help="images per folder")
    parser.add_argument("--blur", type=float, default=0.0,
                        help="Gaussian sigma (low-res pixels) applied to the low-res alpha; 0 = none")
    parser.add_argument("--sweep", action="store_true", help="also tune refine_alpha's r and eps")
    parser.add_argument("--baseline", metavar="REV", help="also compare with refine_alpha at this git revision")
    args = parser.parse_args()
    if args.baseline:
        compare_baseline(args.data, args.limit, args.blur, args.baseline)
        return

    methods = {"bilinear": bilinear, "guided": refine_alpha}
    pooled = {name: dict.fromkeys(COUNTS, 0) for name in methods}
    print(f"Low-res budget {BUDGET} px, blur sigma {args.blur:g}; BIoU d = 1% diagonal, "
          "F tolerance = ceil(0.8% diagonal); counts summed per folder")
    print(f"{'folder':<10} {'n':>4} | {'BIoU bil':>8} {'BIoU gf':>8} | {'F bil':>7} {'F gf':>7} | "
          f"{'IoU bil':>7} {'IoU gf':>7}")
    rows = []
    for folder in FOLDERS:
        pairs = load_pairs(args.data, folder, args.limit, offset=0.0)
        totals = evaluate(pairs, methods, args.blur)
        for name in methods:
            for k in COUNTS:
                pooled[name][k] += totals[name][k]
        rows.append((folder, len(pairs), totals))
    rows.append(("pooled", sum(r[1] for r in rows), pooled))
    for folder, n, totals in rows:
        b, g = reduce(totals["bilinear"]), reduce(totals["guided"])
        print(f"{folder:<10} {n:>4} | {b['biou']:8.4f} {g['biou']:8.4f} | {b['f']:7.4f} {g['f']:7.4f} | "
              f"{b['iou']:7.4f} {g['iou']:7.4f}")
    b, g = reduce(pooled["bilinear"]), reduce(pooled["guided"])
    print(f"pooled ratio guided/bilinear: BIoU {g['biou'] / b['biou']:.3f}, F {g['f'] / b['f']:.3f}; "
          f"boundary error (1 - BIoU) ratio {(1 - g['biou']) / (1 - b['biou']):.3f}")
    median, best = time_refine()
    print(f"refine_alpha 1920x1080 image, 320x180 alpha, {torch.get_num_threads()} threads: "
          f"median {median:.1f} ms, best {best:.1f} ms of 20")
    if args.sweep:
        sweep(args.data, args.limit, args.blur)


if __name__ == "__main__":
    main()
