"""Augmentation: Albumentations 2.0.8 pipelines applied to an image and its masks together.

    pipeline = build_augment("mild", size=(320, 180))
    out = apply_augment(pipeline, image, mask, [valid], seed=1234)  # dict(image, mask, masks)

Inputs are uint8 arrays: image (H, W, 3) RGB, mask (H, W) with 1 = person, extra masks (H, W) such as
`valid` (1 = counts in the loss) or a part-label map; every mask goes through the same geometry with
nearest-neighbour interpolation (INTER_NEAREST_EXACT: plain INTER_NEAREST is not centre-aligned and
shifts masks against the image by up to half a pixel of the larger grid), and pixels that come from
outside the picture get 0 (so `valid` = 0 there: padding is ignored, never called background).

The first step, `PersonCrop`, picks a window of the output's aspect ratio near the person's bounding box
(sometimes cutting the person: partial visibility) and resizes it to the training size in one go
(INTER_AREA when shrinking, INTER_LINEAR when enlarging). With probability `far_prob` the window is
several times the person's height instead, which shrinks the whole scene onto a larger canvas so
people become small: the far-away people that portrait-heavy data never shows. Everything after it
runs at the training size, so a sample costs about a millisecond beyond decoding.

Two intensities: `mild` for real photos and `strong` for synthetic composites.
"""
from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np

from personseg.keypoints import PAD_COLOR


class PersonCrop(A.DualTransform):
    """Crop a window of the output aspect ratio near the person, resize it to `size` = (W, H).

    The window height is `zoom` times the person's bounding box (fitted to the output aspect), with
    zoom drawn from `zoom_range` or, with probability `far_prob`, from `far_range` (people become
    small). Below 1 the window is centred anywhere on the person (partial view), else on the box
    centre jittered by up to `jitter` of the window; then it is shifted to hold as much picture as
    it can. Without a person the picture itself is the box. Needs `mask` in the call.
    """

    def __init__(self, size: tuple[int, int], zoom_range: tuple[float, float] = (0.5, 1.5),
                 far_prob: float = 0.2, far_range: tuple[float, float] = (2.0, 5.0), jitter: float = 0.2,
                 p: float = 1.0):
        super().__init__(p=p)
        self.size = tuple(size)
        self.zoom_range, self.far_prob, self.far_range, self.jitter = zoom_range, far_prob, far_range, jitter

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        H0, W0 = data["image"].shape[:2]
        W, H = self.size
        mask = data.get("mask")
        rows = np.flatnonzero(mask.any(1)) if mask is not None else []
        if len(rows):
            cols = np.flatnonzero(mask.any(0))
            x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
        else:
            x0, x1, y0, y1 = 0, W0, 0, H0
        r = self.py_random
        far = r.random() < self.far_prob
        zoom = r.uniform(*(self.far_range if far else self.zoom_range))
        box_h = max(y1 - y0, (x1 - x0) * H / W)  # the box, fitted to the output aspect
        fit_h = max(H0, W0 * H / W)  # the smallest window holding the whole picture
        # never magnify a speck; pad beyond the picture only when far, and at most far_range[1] times
        crop_h = min(max(zoom * box_h, 0.15 * fit_h), fit_h * (self.far_range[1] if far else 1))
        crop_w = crop_h * W / H
        if zoom < 1:  # partial view: centre anywhere on the person
            cx, cy = r.uniform(x0, x1), r.uniform(y0, y1)
        else:
            cx = (x0 + x1) / 2 + r.uniform(-self.jitter, self.jitter) * crop_w
            cy = (y0 + y1) / 2 + r.uniform(-self.jitter, self.jitter) * crop_h
        # keep as much picture (as little padding) in the window as its size allows
        cx = float(np.clip(cx, *sorted((crop_w / 2, W0 - crop_w / 2))))
        cy = float(np.clip(cy, *sorted((crop_h / 2, H0 - crop_h / 2))))
        return {"window": (cx - crop_w / 2, cy - crop_h / 2, H / crop_h)}

    def apply(self, img: np.ndarray, window: tuple, **params: Any) -> np.ndarray:
        interp = cv2.INTER_AREA if window[2] < 1 else cv2.INTER_LINEAR
        return crop_resize(img, window, self.size, interp, PAD_COLOR[: img.shape[2]] if img.ndim == 3 else 0)

    def apply_to_mask(self, mask: np.ndarray, window: tuple, **params: Any) -> np.ndarray:
        return crop_resize(mask, window, self.size, cv2.INTER_NEAREST_EXACT, 0)

    def apply_to_keypoints(self, keypoints: np.ndarray, window: tuple, **params: Any) -> np.ndarray:
        return window_keypoints(keypoints, window)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "zoom_range", "far_prob", "far_range", "jitter")


def window_keypoints(keypoints: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
    """Keypoints (N, 2+) x, y of the source -> of crop_resize's output (pixel centres stay centres)."""
    x0, y0, k = window
    out = np.array(keypoints, dtype=np.float64, copy=True)
    out[:, 0] = (out[:, 0] - x0) * k
    out[:, 1] = (out[:, 1] - y0) * k
    return out


def crop_resize(src: np.ndarray, window: tuple[float, float, float], size: tuple[int, int], interp: int,
                fill: Any) -> np.ndarray:
    """Output (H, W) = source window starting at (x0, y0) scaled by k; outside the source -> `fill`.

    Only the part of the window inside the source is resized, so enlarging a small crop and
    shrinking a whole scene onto a big canvas both cost about one output image."""
    x0, y0, k = window
    W, H = size
    H0, W0 = src.shape[:2]
    out = np.empty((H, W) + src.shape[2:], src.dtype)
    out[...] = fill
    sx0, sy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    sx1, sy1 = min(W0, int(np.ceil(x0 + W / k))), min(H0, int(np.ceil(y0 + H / k)))
    if sx1 <= sx0 or sy1 <= sy0:
        return out
    dx0, dx1 = round((sx0 - x0) * k), round((sx1 - x0) * k)
    dy0, dy1 = round((sy0 - y0) * k), round((sy1 - y0) * k)
    if dx1 <= dx0 or dy1 <= dy0:
        return out
    part = cv2.resize(src[sy0:sy1, sx0:sx1], (dx1 - dx0, dy1 - dy0), interpolation=interp)
    if part.ndim < src.ndim:  # cv2 drops a trailing channel axis of size 1
        part = part[..., None]
    cx0, cy0 = max(dx0, 0), max(dy0, 0)
    cx1, cy1 = min(dx1, W), min(dy1, H)
    out[cy0:cy1, cx0:cx1] = part[cy0 - dy0: cy1 - dy0, cx0 - dx0: cx1 - dx0]
    return out


class SigmoidContrast(A.ImageOnlyTransform):
    """S-curve contrast: out = sigmoid(gain * (x - cutoff)), rescaled so 0 -> 0 and 255 -> 255 (a LUT)."""

    def __init__(self, gain_range: tuple[float, float] = (3.0, 8.0), cutoff_range: tuple[float, float] = (0.4, 0.6),
                 p: float = 0.5):
        super().__init__(p=p)
        self.gain_range, self.cutoff_range = gain_range, cutoff_range

    def get_params(self) -> dict[str, Any]:
        return {"gain": self.py_random.uniform(*self.gain_range), "cutoff": self.py_random.uniform(*self.cutoff_range)}

    def apply(self, img: np.ndarray, gain: float, cutoff: float, **params: Any) -> np.ndarray:
        x = np.arange(256) / 255.0
        y = 1 / (1 + np.exp(gain * (cutoff - x)))
        y = (y - y[0]) / (y[-1] - y[0])
        return cv2.LUT(img, np.round(y * 255).astype(np.uint8))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gain_range", "cutoff_range")


class BackgroundBlur(A.ImageOnlyTransform):
    """Blur where mask == 0 and blend across a feathered edge: a shallow depth of field (portrait mode).
    Needs `mask` in the call; without a person the whole picture is blurred."""

    def __init__(self, blur_range: tuple[int, int] = (2, 6), p: float = 0.5):
        super().__init__(p=p)
        self.blur_range = blur_range

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        mask = data.get("mask")
        return {"person": mask if mask is not None else None, "sigma": self.py_random.uniform(*self.blur_range)}

    def apply(self, img: np.ndarray, person: np.ndarray | None, sigma: float, **params: Any) -> np.ndarray:
        blurred = cv2.GaussianBlur(img, (0, 0), sigma)
        if person is None:
            return blurred
        w = cv2.GaussianBlur((person > 0).astype(np.float32), (0, 0), 1.5)[..., None]  # feathered edge
        return (w * img + (1 - w) * blurred).round().astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("blur_range",)


# intensity -> knobs; `strong` is for synthetic composites, which need more disguise
_LEVELS = {
    "mild": dict(zoom=(0.5, 1.5), far_prob=0.15, far=(2.0, 4.0), jitter=0.15, rotate=10, p_rotate=0.3,
                 holes=(1, 2), p_holes=0.2, p_shadow=0.1, p_tone=0.4, gain=(3.0, 6.0), hue=5, sat=15, val=10,
                 p_hsv=0.3, noise=(0.01, 0.04), p_noise=0.2, p_bgblur=0.1),
    "strong": dict(zoom=(0.5, 2.0), far_prob=0.35, far=(2.0, 6.0), jitter=0.3, rotate=20, p_rotate=0.5,
                   holes=(1, 4), p_holes=0.4, p_shadow=0.3, p_tone=0.7, gain=(4.0, 10.0), hue=12, sat=30, val=25,
                   p_hsv=0.6, noise=(0.02, 0.08), p_noise=0.4, p_bgblur=0.3),
}


def build_augment(intensity: str, size: tuple[int, int]) -> A.Compose:
    """The training pipeline for `intensity` in ("mild", "strong"); output size `size` = (W, H)."""
    if intensity not in _LEVELS:
        raise ValueError(f"augment intensity {intensity!r}: choose one of {', '.join(_LEVELS)} (or 'none')")
    c = _LEVELS[intensity]
    return A.Compose([
        PersonCrop(size, zoom_range=c["zoom"], far_prob=c["far_prob"], far_range=c["far"], jitter=c["jitter"]),
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=c["rotate"], border_mode=cv2.BORDER_CONSTANT, fill=PAD_COLOR, fill_mask=0, p=c["p_rotate"]),
        # occluders are drawn on the image only: small holes in a person stay person
        A.CoarseDropout(num_holes_range=c["holes"], hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2),
                        fill="random_uniform", p=c["p_holes"]),
        A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.3, 0.7),
                       p=c["p_shadow"]),
        A.OneOf([
            A.RandomGamma(gamma_limit=(70, 140)),
            A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8)),
            SigmoidContrast(gain_range=c["gain"]),
        ], p=c["p_tone"]),
        A.HueSaturationValue(hue_shift_limit=c["hue"], sat_shift_limit=c["sat"], val_shift_limit=c["val"],
                             p=c["p_hsv"]),
        A.GaussNoise(std_range=c["noise"], p=c["p_noise"]),
        BackgroundBlur(p=c["p_bgblur"]),
    ], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


def apply_augment(pipeline: A.Compose, image: np.ndarray, mask: np.ndarray, masks: list[np.ndarray],
                  seed: int, keypoints: np.ndarray | None = None) -> dict[str, Any]:
    """Run `pipeline` with its random state derived from `seed` alone (deterministic per sample,
    whatever worker runs it). Returns dict(image, mask, masks), and `keypoints` (N, 2) x, y moved with
    the picture, plus `flipped` (whether it was mirrored), when keypoints are given."""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    if keypoints is None:
        out = pipeline(image=image, mask=mask, masks=list(masks))
        return {"image": out["image"], "mask": out["mask"], "masks": list(out["masks"])}
    # two probe points left and right of the centre tell a mirror (rotations stay under 90 degrees)
    h, w = image.shape[:2]
    probes = np.array([[w * 0.25, h * 0.5], [w * 0.75, h * 0.5]])
    out = pipeline(image=image, mask=mask, masks=list(masks), keypoints=np.concatenate([keypoints[:, :2], probes]))
    moved = np.asarray(out["keypoints"], np.float64)
    return {"image": out["image"], "mask": out["mask"], "masks": list(out["masks"]),
            "keypoints": moved[:-2, :2], "flipped": bool(moved[-2, 0] > moved[-1, 0])}


def letterbox_window(shape: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float]:
    """crop_resize's window (x0, y0, scale) that fits a picture of `shape` (H, W) into `size` (W, H), centred."""
    (H0, W0), (W, H) = shape, size
    k = min(W / W0, H / H0)
    return -(W - W0 * k) / 2 / k, -(H - H0 * k) / 2 / k, k


def letterbox(image: np.ndarray, mask: np.ndarray, masks: list[np.ndarray], size: tuple[int, int]):
    """Resize keeping aspect to fit in `size` = (W, H), centre, pad (masks pad with 0).
    Returns (image, mask, masks); used for validation and the `none` augmentation."""
    window = letterbox_window(image.shape[:2], size)
    interp = cv2.INTER_AREA if window[2] < 1 else cv2.INTER_LINEAR
    return (crop_resize(image, window, size, interp, PAD_COLOR),
            crop_resize(mask, window, size, cv2.INTER_NEAREST_EXACT, 0),
            [crop_resize(m, window, size, cv2.INTER_NEAREST_EXACT, 0) for m in masks])
