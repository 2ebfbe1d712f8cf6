"""Training the deep guided filter (`guided_filter_torch.DeepGuidedFilterRefiner`) on top of a frozen
shipped model: its low-resolution probability, exactly as inference computes it (ONNX Runtime, the
model's own TTA), is the refiner's input; the target is the full-resolution alpha.

Data, each sample at its own size (the pair of resolutions: the model's 57,600-pixel budget below, the
photo's 480-960 pixel long side above, 1.5x to 3x; real photos up to 800 pixels):
- soft alpha (`MattingScenes`): the 200 RGBA cut-outs' real soft alpha on person-free photos
  (composites/backgrounds, negatives; COCO's photos hold unlabelled people, so they are left out),
  the alpha edge blurred a little as `data.Composites` does (the cut-outs are small and upscaled here,
  so their alpha is sharper than their colours), the cut-out's colours pulled part way to the
  background's and sensor noise added over the whole picture, so the paste's seam is not a cue.
- binary masks (portraits, ccp, hsd, pennfudan): hand-drawn masks are a few pixels off the true edge
  and have no fractional alpha, so their loss leaves out a band of `BAND` pixels either side of the mask
  edge (`band_weight`): there the refiner may be soft, as the true alpha is; elsewhere it must match.
  Optionally (`side_weight`, off by default: it did not help, MODEL_CARD.md) the band asks for the side of
  the model's threshold only (a hinge at the threshold on the mask's side): softness costs nothing there, a
  pixel on the wrong side of the threshold does (what IoU and boundary F count).
Splits follow the project's rule (validation index % 10 == 9, held back == 4, never used here).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from personseg import matting
from personseg.data import paste, random_cutout, read_pair, read_rgb
from personseg.folders import decode_mask, list_images, list_pairs, split_items
from personseg.guided_filter import area_downsample, coefficients, default_radius, refine_alpha
from personseg.guided_filter_torch import DeepGuidedFilterRefiner

BAND = 3  # pixels either side of a binary mask's edge that its loss leaves out
SIDE_WEIGHT = 0.0  # weight of the band's hinge at the threshold (`crop_loss`): off, as refiner4 (refiner5-8 tried it)
SQUARED_WEIGHT = 1.0  # weight of the squared error beside the L1 (`crop_loss`)
SOFT_SHARE = 0.6  # share of soft-alpha composites in the training pool (`training_pool`), the rest real photos
BACKGROUNDS = ("composites/backgrounds", "negatives/images")
MASK_FOLDERS = ("portraits", "ccp", "hsd", "pennfudan")


class MattingScenes:
    """Soft-alpha scenes: `render(seed)` -> (image (H, W, 3) uint8, alpha (H, W) float32), a function of
    (split, seed) only. One or two cut-outs, 35-95% of the picture's height, on a person-free photo
    whose long side is `long_side`."""

    def __init__(self, data_root: str | Path, split: str = "train", long_side: tuple[int, int] = (480, 960)):
        root = Path(data_root)
        self.foregrounds = split_items(list_images(root / "composites/foregrounds"), split)
        self.backgrounds = [p for b in BACKGROUNDS for p in split_items(list_images(root / b), split)]
        self.long_side = long_side

    def background(self, rng: np.random.Generator) -> np.ndarray:
        image = read_rgb(self.backgrounds[rng.integers(len(self.backgrounds))])
        scale = int(rng.integers(*self.long_side)) / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)

    def person(self, rng: np.random.Generator, h: int, back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A cut-out `h` pixels tall: rgb (h', w', 3) float32 colour-matched to `back`, alpha in [0, 1]
        with its edge blurred (sigma 0.5-1.2 pixels), both padded for the blur."""
        rgb, a = random_cutout(self.foregrounds, rng, h)
        inside = a > 0.5
        if inside.any():  # colour matching: part of the way to the background's mean and contrast
            s = rng.uniform(0, 0.4)
            mean, std = rgb[inside].mean(0), rgb[inside].std(0) + 1
            rgb = (rgb - mean) * (1 + s * (back.reshape(-1, 3).std(0) / std - 1)) \
                + mean + s * (back.reshape(-1, 3).mean(0) - mean)
        pad = 4
        a = cv2.GaussianBlur(np.pad(a, pad), (0, 0), rng.uniform(0.5, 1.2))
        rgb = np.pad(rgb.clip(0, 255), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        return rgb, a

    def render(self, seed: int, with_foreground: bool = False):
        """(image (H, W, 3) uint8, alpha (H, W) float32); `with_foreground` adds the people's own colours
        F (H, W, 3) float32 (the colour-matched cut-outs, before noise), valid where alpha > 0."""
        rng = np.random.default_rng(seed)
        back = self.background(rng)
        image = back.astype(np.float32)
        H, W = image.shape[:2]
        alpha, fg = np.zeros((H, W), np.float32), np.zeros((H, W, 3), np.float32)
        for scale in np.sort(rng.uniform(0.35, 0.95, size=int(rng.integers(1, 3)))):
            rgb, a = self.person(rng, max(8, round(scale * H)), back.astype(np.float32))
            x = int(rng.integers(-a.shape[1] // 3, max(1 - a.shape[1] // 3, W - 2 * a.shape[1] // 3)))
            y = int(rng.integers(0, max(1, H - a.shape[0] // 2)))
            paste(image, alpha, rgb, a, x, y)
            paste(fg, np.zeros_like(alpha), rgb, (a > 0).astype(np.float32), x, y)
        image += rng.normal(0, rng.uniform(0, 4), image.shape).astype(np.float32)
        image = image.round().clip(0, 255).astype(np.uint8)
        return (image, alpha, fg) if with_foreground else (image, alpha)

    def clip(self, seed: int, frames: int = 16, shift: float = 0.12, zoom: float = 0.08):
        """A moving soft-alpha clip, for temporal coherence (dtSSD): (images (T, H, W, 3) uint8, alphas
        (T, H, W) float32), a function of (split, seed) only. One cut-out (as `render` draws it: colour
        matched, edge blurred) glides over a still background from one pose to another with a cosine
        ease: its top-left moves up to `shift` of the picture's width and height, its size changes by
        up to `zoom`, at sub-pixel steps (each frame resampled from the same cut-out, then `paste`d).
        Sensor noise is drawn anew on every frame, as a camera's is."""
        rng = np.random.default_rng(seed)
        back = self.background(rng)
        H, W = back.shape[:2]
        rgb, a = self.person(rng, max(8, round(rng.uniform(0.45, 0.85) * H)), back.astype(np.float32))
        h, w = a.shape
        x = rng.uniform(-w / 4, max(-w / 4 + 1, W - 3 * w / 4), 2)
        x[1] = x[0] + rng.uniform(-shift, shift) * W
        y = rng.uniform(0, max(1, H - h / 2), 2)
        y[1] = y[0] + rng.uniform(-shift, shift) * H
        scale = 1 + rng.uniform(-zoom, zoom, 2) / 2
        noise = rng.uniform(0, 4)
        images, alphas = [], []
        for t in range(frames):
            ease = (1 - math.cos(math.pi * t / max(1, frames - 1))) / 2
            (xt, yt, st) = (v[0] + (v[1] - v[0]) * ease for v in (x, y, scale))
            x0, y0 = math.floor(xt), math.floor(yt)
            M = np.float32([[st, 0, xt - x0], [0, st, yt - y0]])  # the cut-out's sub-pixel pose, then paste
            size = (math.ceil(w * st) + 2, math.ceil(h * st) + 2)
            rgb_t = cv2.warpAffine(rgb, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            a_t = cv2.warpAffine(a, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            image, alpha = back.astype(np.float32), np.zeros((H, W), np.float32)
            paste(image, alpha, rgb_t, np.clip(a_t, 0, 1), x0, y0)
            image += rng.normal(0, noise, image.shape).astype(np.float32)
            images.append(image.round().clip(0, 255).astype(np.uint8))
            alphas.append(alpha)
        return np.stack(images), np.stack(alphas)


class MaskPhotos:
    """Real photos with binary masks of `folders` in `split`: `load(seed)` -> (image, mask (H, W) float32
    in {0, 1}, valid (H, W) float32), the long side at most `max_side`."""

    def __init__(self, data_root: str | Path, split: str = "train", folders=MASK_FOLDERS, max_side: int = 800):
        self.pairs = [p for f in folders for p in list_pairs(Path(data_root) / f, split)[0]]
        self.max_side = max_side

    def load(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        image, gray = read_pair(*self.pairs[rng.integers(len(self.pairs))])
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        if scale < 1:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST_EXACT)
        if rng.random() < 0.5:
            image, gray = image[:, ::-1].copy(), gray[:, ::-1].copy()
        mask, valid = decode_mask(gray)
        return image, mask.astype(np.float32), valid.astype(np.float32)


def band_weight(mask: np.ndarray, valid: np.ndarray, band: int = BAND) -> np.ndarray:
    """(H, W) float32: 0 within `band` pixels of the mask's edge (either side) and where not valid, else 1."""
    m = (mask > 0.5).astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    far = (inside > band) | (outside > band)
    return (far & (valid > 0)).astype(np.float32)


def band_side(mask: np.ndarray, valid: np.ndarray, band: int = BAND) -> np.ndarray:
    """(H, W) float32: +1 / -1 on the valid pixels `band_weight` leaves out that are inside / outside the
    mask, 0 elsewhere: the side of the threshold `crop_loss`'s hinge asks of each band pixel."""
    near = (band_weight(mask, valid, band) == 0) & (valid > 0)
    return (near * np.where(mask > 0.5, 1, -1)).astype(np.float32)


def model_probability(predictor, image: np.ndarray) -> np.ndarray:
    """The frozen model's low-resolution probability (h, w) float32, as `Predictor.upsample` receives it."""
    return predictor._forward([image], predictor.spec.model_size(*image.shape[:2]))[0][0]


def make_sample(predictor, image, target, weight, soft: bool, side: np.ndarray | None = None) -> dict:
    """One training or validation sample, with what does not change while training precomputed as
    inference computes it (`DeepRefiner.coefficients`): the low-resolution guide and analytic coef, and
    the low-resolution pixels near an edge (`edges`, where crops are centred). `side` (binary masks):
    +1 / -1 on the band's pixels inside / outside the mask, 0 elsewhere (`band_side`)."""
    prob = model_probability(predictor, image)
    h, w = prob.shape
    guide_lr = area_downsample(image, h, w)
    coef = coefficients(guide_lr, prob.astype(np.float64), default_radius(h, w), 1e-5)
    target_lr = cv2.resize(target, (w, h), interpolation=cv2.INTER_AREA)
    edges = np.argwhere(((target_lr > 0.02) & (target_lr < 0.98)) | ((prob > 0.02) & (prob < 0.98)))
    return {"image": image, "prob": prob, "target": target, "weight": weight, "soft": soft, "side": side,
            "edges": edges,
            "guide_lr": torch.from_numpy(guide_lr.transpose(2, 0, 1)[None].astype(np.float32)),
            "coef": torch.from_numpy(coef[None].astype(np.float32))}


def predict_alpha(refiner: DeepGuidedFilterRefiner, s: dict) -> torch.Tensor:
    """(H, W) alpha of one whole sample."""
    guide = torch.from_numpy(s["image"]).permute(2, 0, 1)[None].float() / 255
    return refiner(guide, torch.from_numpy(s["prob"])[None, None], s["guide_lr"], s["coef"])[0, 0]


def _hires_rows(lo: int, hi: int, n: int, N: int) -> tuple[int, int]:
    """The full-resolution rows [a, b) whose bilinear source row (Y + .5) n / N - .5, clamped to
    [0, n - 1] as torch's and OpenCV's resize clamp it, lies in [lo, hi - 1]."""
    a = 0 if lo == 0 else math.ceil((lo + 0.5) * N / n - 0.5)
    b = N if hi >= n else math.floor((hi - 1 + 0.5) * N / n - 0.5) + 1
    return a, b


def crop_alpha(refiner: DeepGuidedFilterRefiner, s: dict, y: int, x: int, size: int = 40):
    """The refiner's alpha on the full-resolution pixels of the low-resolution window [y, y + size) x
    [x, x + size), computed from that window (plus the net's reach, on its scale's grid) only: the same
    values as `predict_alpha` there, at a fraction of the cost. Returns (alpha (h', w'), (Y0, Y1, X0, X1))."""
    h, w = s["prob"].shape
    H, W = s["image"].shape[:2]
    y1, x1 = min(h, y + size), min(w, x + size)
    reach, k = refiner.net.reach, refiner.net.scale
    ya, xa = max(0, y - reach) // k * k, max(0, x - reach) // k * k
    yb, xb = min(h, -(-(y1 + reach) // k) * k), min(w, -(-(x1 + reach) // k) * k)
    window = (slice(None), slice(None), slice(ya, yb), slice(xa, xb))
    prob = torch.from_numpy(s["prob"])[None, None]
    coef = refiner.net(s["coef"][window], s["guide_lr"][window], prob[window])
    (Y0, Y1), (X0, X1) = _hires_rows(y, y1, h, H), _hires_rows(x, x1, w, W)

    def grid(a: int, b: int, n: int, N: int, lo: int, m: int) -> torch.Tensor:
        src = ((torch.arange(a, b, dtype=torch.float64) + 0.5) * n / N - 0.5).clamp(0, n - 1) - lo
        return (src / max(m - 1, 1) * 2 - 1).float()  # align_corners=True: -1 and 1 are the end pixels

    gy, gx = grid(Y0, Y1, h, H, ya, yb - ya), grid(X0, X1, w, W, xa, xb - xa)
    sample_grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]  # (1, h', w', (x, y))
    up = F.grid_sample(coef, sample_grid, mode="bilinear", align_corners=True)
    guide = torch.from_numpy(s["image"][Y0:Y1, X0:X1]).permute(2, 0, 1)[None].float() / 255
    return ((up[:, :3] * guide).sum(1) + up[:, 3]).clamp(0, 1)[0], (Y0, Y1, X0, X1)


def crop_loss(refiner: DeepGuidedFilterRefiner, s: dict, rng: np.random.Generator, size: int = 40,
              side_weight: float = SIDE_WEIGHT, squared_weight: float = SQUARED_WEIGHT,
              threshold: float = 0.5) -> torch.Tensor:
    """The loss on one crop, centred on an edge pixel 3 times in 4, else anywhere:
    L1 plus `squared_weight` times the squared error (L1 alone settles for the median and leaves large
    errors: the MSE of a refiner trained on L1 alone was above the analytic filter's). Soft alpha adds L1
    of the alpha's x and y differences against the target's (edges as sharp as the target's). Binary masks
    weight the error by `band_weight` and add no difference term: their edge is not the true one. In
    their band they add `side_weight` times the mean hinge max(0, side (threshold - alpha)) (`band_side`;
    `threshold`: the model's): any softness on the mask's side of the threshold is free."""
    h, w = s["prob"].shape
    if len(s["edges"]) and rng.random() < 0.75:
        cy, cx = s["edges"][rng.integers(len(s["edges"]))]
    else:
        cy, cx = rng.integers(h), rng.integers(w)
    y, x = int(np.clip(cy - size // 2, 0, max(0, h - size))), int(np.clip(cx - size // 2, 0, max(0, w - size)))
    alpha, (Y0, Y1, X0, X1) = crop_alpha(refiner, s, y, x, size)
    target = torch.from_numpy(s["target"][Y0:Y1, X0:X1])
    weight = torch.from_numpy(s["weight"][Y0:Y1, X0:X1])
    error = alpha - target
    loss = ((error.abs() + squared_weight * error ** 2) * weight).sum() / weight.sum().clamp(min=1)
    if s["soft"]:
        for d in (lambda t: t[1:] - t[:-1], lambda t: t[:, 1:] - t[:, :-1]):
            loss = loss + (d(alpha) - d(target)).abs().mean()
    elif side_weight and s.get("side") is not None:
        side = torch.from_numpy(s["side"][Y0:Y1, X0:X1])
        hinge = (side * (threshold - alpha)).clamp(min=0)
        loss = loss + side_weight * hinge.sum() / side.abs().sum().clamp(min=1)
    return loss


def _score(errors: dict, analytic: dict) -> float:
    """What the best checkpoint minimises: SAD and MSE, each relative to the analytic filter's."""
    return errors["sad"] / analytic["analytic_sad"] + errors["mse"] / analytic["analytic_mse"]


def validation_set(predictor, data_root, count: int = 40, seed: int = 1234) -> list[dict]:
    """`count` soft-alpha scenes of the validation cut-outs and backgrounds (scene i: seed * 1000003 + i)."""
    scenes = MattingScenes(data_root, "val")
    out = []
    for i in range(count):
        image, alpha = scenes.render(seed * 1_000_003 + i)
        out.append(make_sample(predictor, image, alpha, np.ones_like(alpha), True))
    return out


def evaluate(refiner: DeepGuidedFilterRefiner | None, samples: list[dict], full: bool = False) -> dict[str, float]:
    """Mean SAD and MSE (`full`: all four matting errors, personseg.matting) over `samples`: the refiner's,
    or the analytic filter's (`refine_alpha`, what inference runs) when `refiner` is None."""
    totals: dict[str, float] = {}
    for s in samples:
        if refiner is None:
            alpha = refine_alpha(s["image"], s["prob"])
        else:
            with torch.no_grad():
                alpha = predict_alpha(refiner, s).numpy()
        errors = matting.matting_errors(alpha, s["target"]) if full else \
            {"sad": matting.sad(alpha, s["target"]), "mse": matting.mse(alpha, s["target"])}
        for k, v in errors.items():
            totals[k] = totals.get(k, 0.0) + v / len(samples)
    return totals


def training_pool(predictor, data_root, count: int, seed: int, soft_share: float = SOFT_SHARE,
                  deadline: float = math.inf) -> list[dict]:
    """`count` training samples (fewer if time.time() passes `deadline`), a share `soft_share` of them
    soft-alpha scenes, the rest real photos with binary masks (their loss weight: `band_weight`)."""
    rng = np.random.default_rng(seed)
    scenes, photos = MattingScenes(data_root, "train"), MaskPhotos(data_root, "train")
    pool = []
    for _ in range(count):
        if time.time() > deadline and len(pool) >= 16:
            break
        sample_seed = int(rng.integers(1 << 62))
        if rng.random() < soft_share:
            image, alpha = scenes.render(sample_seed)
            pool.append(make_sample(predictor, image, alpha, np.ones_like(alpha), True))
        else:
            image, mask, valid = photos.load(sample_seed)
            weight, side = band_weight(mask, valid), band_side(mask, valid)
            pool.append(make_sample(predictor, image, mask, weight, False, side))
    return pool


def train(predictor, data_root, out_dir, minutes: float = 35.0, seed: int = 0, hidden: int = 16,
          lr: float = 3e-3, batch: int = 16, pool_size: int = 300, val_count: int = 24,
          eval_minutes: float = 3.0, side_weight: float = SIDE_WEIGHT, squared_weight: float = SQUARED_WEIGHT,
          soft_share: float = SOFT_SHARE, scale: int = 1, squash: str = "asinh") -> dict:
    """Build a pool of `pool_size` samples (`training_pool`, in at most half the time), then train on
    edge-centred crops of them (`crop_loss`) for the rest of `minutes` (wall time, cosine learning rate),
    validating (SAD, MSE) every `eval_minutes` and keeping the best `_score` (validation SAD and MSE
    relative to the analytic filter's). Writes out_dir/log.jsonl and out_dir/best.pt (state and kwargs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.manual_seed(seed)
    kwargs = {"hidden": hidden, "scale": scale, "squash": squash}
    refiner = DeepGuidedFilterRefiner(**kwargs)
    opt = torch.optim.Adam(refiner.parameters(), lr=lr)
    val = validation_set(predictor, data_root, val_count)
    pool = training_pool(predictor, data_root, pool_size, seed, soft_share, deadline=start + minutes * 30)
    analytic = {f"analytic_{k}": v for k, v in evaluate(None, val).items()}
    best, rng, step, losses = {"score": math.inf}, np.random.default_rng(seed), 0, []
    t0, next_eval = (time.time() - start) / 60, 0.0
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"pool": len(pool), "val": len(val), "minutes": round(t0, 2), "side_weight": side_weight,
                            "squared_weight": squared_weight, "soft_share": soft_share, **kwargs, **analytic}) + "\n")
    while (elapsed := (time.time() - start) / 60) < minutes:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (elapsed - t0) / max(minutes - t0, 1e-6)))
        loss = sum(crop_loss(refiner, pool[rng.integers(len(pool))], rng, side_weight=side_weight,
                             squared_weight=squared_weight, threshold=predictor.threshold)
                   for _ in range(batch)) / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if elapsed >= next_eval or (time.time() - start) / 60 >= minutes:
            next_eval = elapsed + eval_minutes
            line = {"step": step, "minutes": round(elapsed, 2), "loss": float(np.mean(losses[-100:])),
                    **evaluate(refiner, val)}
            line["score"] = _score(line, analytic)
            if line["score"] < best["score"]:
                best = dict(line)
                torch.save({"state_dict": refiner.state_dict(), "kwargs": kwargs, "val": line},
                           out / "best.pt")
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({**line, "best_score": best["score"], **analytic}) + "\n")
    return {**best, **analytic}


def export_refiner(refiner: DeepGuidedFilterRefiner, path: str | Path, model_file: str | Path,
                   val: dict | None = None) -> Path:
    """The refiner's `CoefficientNet` as ONNX (inputs coef (1, 4, h, w), guide (1, 3, h, w), prob
    (1, 1, h, w); output refined (1, 4, h, w); h and w dynamic) with the metadata `DeepRefiner` reads:
    format, eps, the model file it was trained on and that file's sha256, its validation figures."""
    import onnx

    from personseg.predict import file_sha256
    from personseg.refiner import FORMAT

    net = refiner.net.eval()
    h, w = 24, 40
    args = (torch.randn(1, 4, h, w), torch.rand(1, 3, h, w), torch.rand(1, 1, h, w))
    axes = {0: "batch", 2: "height", 3: "width"}
    path = Path(path)
    torch.onnx.export(net, args, str(path), dynamo=False, do_constant_folding=True, opset_version=17,
                      input_names=["coef", "guide", "prob"], output_names=["refined"],
                      dynamic_axes={n: axes for n in ("coef", "guide", "prob", "refined")})
    proto = onnx.load(str(path))
    meta = {"format": FORMAT, "eps": repr(refiner.eps), "hidden": str(net.body[0].out_channels),
            "scale": str(net.scale), "squash": net.squash,
            "model": Path(model_file).name, "model_sha256": file_sha256(model_file),
            "val": json.dumps(val or {})}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path
