"""Turn a photo and its person alpha into pictures: masks, cut-outs, overlays, new backgrounds.

Every function takes `rgb` (H, W, 3) uint8 and/or `alpha` (H, W) float in [0, 1] and returns a uint8 array:
(H, W) for masks, (H, W, 3) RGB or (H, W, 4) RGBA for pictures. Pure numpy/OpenCV, no torch.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from personseg.imageio import read_image
from personseg.keypoints import COCO_KEYPOINTS, draw_skeleton, to_coco
from personseg.parts import colorize

COLORS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "red": (255, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}

Background = str | tuple[int, int, int] | np.ndarray  # "blur", an RGB colour, or an (H, W, 3) image


def mask(alpha: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) uint8: 255 where alpha >= threshold (person), else 0."""
    return np.where(alpha >= threshold, 255, 0).astype(np.uint8)


def soft_alpha(alpha: np.ndarray) -> np.ndarray:
    """(H, W) uint8: alpha scaled to 0..255."""
    return np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)


def cutout(rgb: np.ndarray, alpha: np.ndarray, foreground: bool = True) -> np.ndarray:
    """(H, W, 4) RGBA: the person's colours with the soft alpha as transparency. `foreground`: the colours
    are the person's own estimated where alpha is fractional (`matting.estimate_foreground`), so the
    cut-out carries no rim of the old background; False keeps the photo's."""
    return np.dstack([person_colours(rgb, alpha) if foreground else rgb, soft_alpha(alpha)])


def person_colours(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the photo with the person's own colour (Blur-Fusion) wherever 0 < alpha < 1."""
    from personseg.matting import estimate_foreground

    soft = (alpha > 1 / 512) & (alpha < 1 - 1 / 512)
    if not soft.any():
        return rgb
    return np.where(soft[..., None], estimate_foreground(rgb, alpha), rgb)


def overlay(
    rgb: np.ndarray,
    alpha: np.ndarray,
    threshold: float,
    color: tuple[int, int, int] = (0, 255, 0),
    opacity: float = 0.5,
) -> np.ndarray:
    """(H, W, 3) RGB: the photo with the mask tinted in `color` and its outline drawn."""
    binary = mask(alpha, threshold)
    tint = (binary[..., None] / 255.0) * opacity
    out = rgb * (1.0 - tint) + np.asarray(color, np.float64) * tint
    out = np.round(out).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(rgb.shape[:2]) / 200))
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness, lineType=cv2.LINE_AA)
    return out


def compare(rgb: np.ndarray, alpha: np.ndarray, threshold: float, foreground: bool = True) -> np.ndarray:
    """(H, 3W, 3) RGB: original | mask | cut-out on a checkerboard, side by side."""
    binary = np.repeat(mask(alpha, threshold)[..., None], 3, axis=2)
    on_checkerboard = replace_background(rgb, alpha, checkerboard(*rgb.shape[:2]), foreground)
    return np.hstack([rgb, binary, on_checkerboard])


def checkerboard(height: int, width: int, cell: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 light grey checkerboard, the usual picture of "transparent"."""
    cell = cell or max(8, min(height, width) // 40)
    rows, cols = np.indices((height, width)) // cell
    light = ((rows + cols) % 2 == 0)[..., None]
    return np.where(light, 255, 204).astype(np.uint8).repeat(3, axis=2)


def replace_background(rgb: np.ndarray, alpha: np.ndarray, background: Background,
                       foreground: bool = True) -> np.ndarray:
    """(H, W, 3) RGB: the person composited with the soft alpha onto `background`: an RGB colour, an image
    (resized to cover and centre-cropped) or "blur" (the photo's own background, strongly blurred).
    `foreground`: the person's estimated own colours at the soft edge (`person_colours`), not the photo's."""
    height, width = rgb.shape[:2]
    if isinstance(background, str):
        if background != "blur":
            raise ValueError(f"background string must be 'blur', got {background!r}; use parse_background()")
        back = blurred_background(rgb, alpha)
    elif isinstance(background, np.ndarray):
        back = np.ascontiguousarray(cover(background, height, width), dtype=np.uint8)
    else:
        back = np.empty_like(rgb)
        back[:] = np.asarray(background, np.uint8)
    a = np.clip(alpha, 0.0, 1.0).astype(np.float32, copy=False)
    person = np.ascontiguousarray(person_colours(rgb, alpha) if foreground else rgb)
    # One OpenCV pass over uint8 pictures, (a person + (1 - a) back) / (1 + 1e-5) rounded. The float32
    # pictures and temporaries before were fresh memory every frame (2,000 page faults a 480p frame) and
    # made this 3x slower; same result within 2 grey levels (1 but for 7 in a million values of the blur).
    return cv2.blendLinear(person, back, a, 1.0 - a)


def cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize `image` (H, W, 3) to cover height x width, keeping its aspect ratio, and centre-crop."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    scale = max(height / image.shape[0], width / image.shape[1])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, size, interpolation=interpolation)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[top : top + height, left : left + width]


def blurred_background(rgb: np.ndarray, alpha: np.ndarray, work_size: int = 160) -> np.ndarray:
    """(H, W, 3) uint8: the photo blurred with the person left out, so they do not bleed into it.

    Normalised convolution: blur(photo * weight) / blur(weight) with weight = 1 - alpha averages only
    background pixels. Blurring happens at `work_size` pixels on the long side: a strong blur (sigma a 40th
    of the picture) loses nothing there, and it costs the same for any photo size. 160 instead of 320 made a
    480p video frame's blur 3.6 ms instead of 6.7, for a mean difference of 0.3 grey levels (most of it
    under the person, who covers it).
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, work_size / max(height, width))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    weight = cv2.resize((1.0 - np.clip(alpha, 0.0, 1.0)).astype(np.float32), small, interpolation=cv2.INTER_AREA)
    photo = cv2.resize(rgb.astype(np.float32), small, interpolation=cv2.INTER_AREA)
    sigma = max(small) / 40
    blurred_weight = cv2.GaussianBlur(weight, (0, 0), sigma)
    blurred = cv2.GaussianBlur(photo * weight[..., None], (0, 0), sigma)
    plain = cv2.GaussianBlur(photo, (0, 0), sigma)
    eps = 1e-3  # deep inside the person (covered by it anyway) fall back to a plain blur
    denominator = np.maximum(blurred_weight, eps)[..., None]
    back = np.where(blurred_weight[..., None] > eps, blurred / denominator, plain)
    # rounded at the small size: enlarging uint8 moves a quarter of the bytes of float32
    small_back = np.clip(np.rint(back), 0, 255).astype(np.uint8)
    return cv2.resize(small_back, (width, height), interpolation=cv2.INTER_LINEAR)


def parse_background(value: str, images: bool = True) -> Background:
    """"blur", "#RRGGBB", "R,G,B", a colour name (white, black, green, blue, red, gray) or, if `images`, an
    image path. The server and the demo pass images=False: a client must not make them read files."""
    text = value.strip()
    if text.lower() == "blur":
        return "blur"
    if text.lower() in COLORS:
        return COLORS[text.lower()]
    if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
    if re.fullmatch(r"\s*\d+\s*,\s*\d+\s*,\s*\d+\s*", text):
        color = tuple(int(c) for c in text.split(","))
        if max(color) > 255:
            raise ValueError(f"background {value!r}: each of R,G,B must be 0..255")
        return color
    if images and Path(text).is_file():
        return read_image(text)
    colours = f"'blur' or a colour (#RRGGBB, R,G,B or one of {', '.join(COLORS)})"
    raise ValueError(f"background {value!r} is not {colours}{' or an existing image file' if images else ''}")


class Output(NamedTuple):
    """One output kind: `render(rgb, alpha, threshold, background, foreground)` -> its picture (`foreground`:
    the person's own colours at soft edges, see `cutout`), the `suffix` of its
    file after the input's stem, a one-line `about` for --help, and whether the picture is `rgba`
    (videos of it are then QuickTime Animation .mov files or folders of PNGs)."""
    render: Callable[..., np.ndarray]
    suffix: str
    about: str
    rgba: bool = False


# The output kinds of `personseg segment --save`, `personseg video --output-kind`, the server's `output=`
# and the Ray job. Pictures for people to look at are JPEG (small); exact data is PNG.
OUTPUTS: dict[str, Output] = {
    "mask": Output(lambda rgb, alpha, t, back, fg: mask(alpha, t), "_mask.png",
                   "8-bit mask: 255 = person, 0 = background (alpha >= --threshold)"),
    "alpha": Output(lambda rgb, alpha, t, back, fg: soft_alpha(alpha), "_alpha.png", "8-bit soft alpha, 0..255"),
    "cutout": Output(lambda rgb, alpha, t, back, fg: cutout(rgb, alpha, fg), "_cutout.png",
                     "RGBA cut-out: the picture with the soft alpha as transparency", rgba=True),
    "overlay": Output(lambda rgb, alpha, t, back, fg: overlay(rgb, alpha, t), "_overlay.jpg",
                      "the picture with the mask tinted green and outlined"),
    "compare": Output(lambda rgb, alpha, t, back, fg: compare(rgb, alpha, t, fg), "_compare.jpg",
                      "picture | mask | cut-out on a checkerboard, side by side"),
    "background": Output(lambda rgb, alpha, t, back, fg: replace_background(rgb, alpha, back, fg), "_background.jpg",
                         "the person composited onto --background"),
}


def output(kind: str, rgb: np.ndarray, alpha: np.ndarray, threshold: float, background: Background = "blur",
           foreground: bool = True) -> np.ndarray:
    """The picture of one output kind of `OUTPUTS` (`background` is used by "background" only; `foreground`
    by cutout, compare and background)."""
    if kind not in OUTPUTS:
        raise ValueError(f"output {kind!r}: choose one of {', '.join(OUTPUTS)}")
    return OUTPUTS[kind].render(rgb, alpha, threshold, background, foreground)


class HeadOutput(NamedTuple):
    """An output of a multi-task model's heads (`--model parts`): `render(rgb, prediction)` with the
    prediction of `Predictor.predict_all`, returning a picture, or text for .json files."""
    render: Callable[[np.ndarray, dict], np.ndarray | str]
    suffix: str
    about: str


def _landmarks_json(people: list[dict]) -> str:
    return json.dumps({"keypoints": list(COCO_KEYPOINTS), "people": to_coco(people)}, indent=1) + "\n"


# `segment --save parts` writes parts and parts_color; `--save landmarks` writes landmarks and skeleton.
HEAD_OUTPUTS: dict[str, HeadOutput] = {
    "parts": HeadOutput(lambda rgb, p: p["parts"], "_parts.png",
                        "body-part classes, one byte a pixel: 0 background, 1 hair, 2 face-skin, 3 body-skin, "
                        "4 clothes, 5 accessories"),
    "parts_color": HeadOutput(lambda rgb, p: colorize(p["parts"]), "_parts_color.png",
                              "the part map in colour (legend: personseg segment --help)"),
    "landmarks": HeadOutput(lambda rgb, p: _landmarks_json(p["people"]), "_landmarks.json",
                            "17 COCO keypoints per person: [x, y, v] * 17 in pixels, v = 2 seen, 0 not found"),
    "skeleton": HeadOutput(lambda rgb, p: draw_skeleton(rgb, p["people"]), "_skeleton.jpg",
                           "the picture with each person's skeleton drawn"),
}
HEAD_GROUPS = {"parts": ("parts", "parts_color"), "landmarks": ("landmarks", "skeleton")}


def suffix_of(kind: str) -> str:
    """The file suffix of an output kind of OUTPUTS or HEAD_OUTPUTS."""
    return (OUTPUTS.get(kind) or HEAD_OUTPUTS[kind]).suffix
