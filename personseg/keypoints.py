"""Body landmarks: COCO's 17 keypoints as heatmaps, decoded and grouped per person.

Targets follow SimpleBaseline (Xiao, Wu, Wei, "Simple Baselines for Human Pose Estimation and
Tracking", ECCV 2018): one Gaussian per visible keypoint on a heatmap at stride `STRIDE` of the input
(several people in one map take the element-wise max; the shipped head trains on one person a crop,
personseg.data.CocoPersonCrops). Decoding takes each channel's maximum and refines it to sub-pixel precision
with DARK's Taylor step (`peak`).

People are found top-down, as SimpleBaseline does with a person detector: each connected region of the
predicted person mask (8-connected, at least `MIN_REGION` of the picture) is one person; the photo is
cropped around the region's box (grown by `CROP_PAD`, widened to the model's tall input, `crop_window`)
and the crop goes through the network again, so a small person fills the model's input, beside its
mirror image (SimpleBaseline's flip test: the mirror's heatmaps, `unmirror`ed, averaged with the crop's).
Its keypoints are each channel's maximum in the crop. Limits: people who touch or overlap in the mask
become one region (one skeleton, the stronger of their joints), a person split by an occluder becomes
two, and each person costs one more network call (a batch of the crop and its mirror image). Torch-free (numpy and OpenCV).
"""
from __future__ import annotations

import cv2
import numpy as np

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# COCO's skeleton (0-based pairs) and the channel of each keypoint in a mirrored picture
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
            (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
STRIDE = 4
MIN_REGION = 0.002
CROP_PAD = 1.25  # SimpleBaseline's: the person box grown by a quarter before cropping
MAX_PEOPLE = 10  # top_down reads the largest regions only: each costs a network pass
DARK_KERNEL = (11, 11)  # DARK's smoothing at SimpleBaseline's sigma of 2 heatmap pixels
PAD_COLOR = (124, 116, 104)  # ImageNet's mean as uint8 RGB: padding (training's and crops') normalises to ~0


def sigma_for(stride: int = STRIDE) -> float:
    """The Gaussian's standard deviation in heatmap pixels (SimpleBaseline: 2 at stride 4)."""
    return 8.0 / stride


def render_heatmaps(people: np.ndarray, size: tuple[int, int], stride: int = STRIDE) -> np.ndarray:
    """(P, 17, 3) keypoints in input pixels (x, y, visibility; v > 0 = labelled) -> (17, h, w) float32
    heatmaps for an input of `size` (H, W), h = ceil(H / stride)."""
    h, w = -(-size[0] // stride), -(-size[1] // stride)
    out = np.zeros((len(COCO_KEYPOINTS), h, w), np.float32)
    sigma = sigma_for(stride)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None]
    for person in np.asarray(people, np.float32).reshape(-1, len(COCO_KEYPOINTS), 3):
        for k, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            # heatmap pixel centres sit at input (i + 0.5) * stride
            cx, cy = x / stride - 0.5, y / stride - 0.5
            if -3 * sigma < cx < w + 3 * sigma and -3 * sigma < cy < h + 3 * sigma:
                g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
                np.maximum(out[k], g, out=out[k])
    return out


def peak(heatmap: np.ndarray) -> tuple[float, float, float]:
    """(x, y, score) of a heatmap's maximum in heatmap pixels, at sub-pixel precision: DARK's Taylor step
    (Zhang et al., "Distribution-Aware Coordinate Representation for Human Pose Estimation", CVPR 2020):
    the heatmap smoothed by a Gaussian of the targets' width (`DARK_KERNEL`), its log's gradient and Hessian
    at the maximum give the offset of the Gaussian's centre (-H^-1 g, at most a pixel). Within two pixels of
    the border, or where the log is not concave there, the maximum moves a quarter pixel towards the higher
    neighbour instead (SimpleBaseline's rule). On coco's validation photos with the shipped `parts`: OKS
    AP 0.148 -> 0.153, PCK@0.1 0.519 -> 0.525 against the quarter-pixel rule on the same heatmaps."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    score = float(heatmap[y, x])
    h, w = heatmap.shape
    if 1 < x < w - 2 and 1 < y < h - 2 and score > 0:
        reach = DARK_KERNEL[0] // 2 + 2  # the smoothing's radius, plus the differences' two pixels
        y0, x0 = max(0, y - reach), max(0, x - reach)
        window = np.float32(heatmap[y0:y + reach + 1, x0:x + reach + 1])
        smooth = cv2.GaussianBlur(window, DARK_KERNEL, 0, borderType=cv2.BORDER_CONSTANT)
        log = np.log(np.maximum(smooth * (score / max(float(smooth.max()), 1e-12)), 1e-10))
        j, i = y - y0, x - x0
        dx, dy = (log[j, i + 1] - log[j, i - 1]) / 2, (log[j + 1, i] - log[j - 1, i]) / 2
        dxx = (log[j, i + 2] - 2 * log[j, i] + log[j, i - 2]) / 4
        dyy = (log[j + 2, i] - 2 * log[j, i] + log[j - 2, i]) / 4
        dxy = (log[j + 1, i + 1] - log[j - 1, i + 1] - log[j + 1, i - 1] + log[j - 1, i - 1]) / 4
        det = dxx * dyy - dxy ** 2
        if dxx < 0 and det > 1e-12:  # a maximum: the Hessian is negative definite
            ox, oy = -(dyy * dx - dxy * dy) / det, -(dxx * dy - dxy * dx) / det
            return x + float(np.clip(ox, -1, 1)), y + float(np.clip(oy, -1, 1)), score
    fx, fy = float(x), float(y)
    if 0 < x < w - 1:
        fx += 0.25 * np.sign(heatmap[y, x + 1] - heatmap[y, x - 1])
    if 0 < y < h - 1:
        fy += 0.25 * np.sign(heatmap[y + 1, x] - heatmap[y - 1, x])
    return fx, fy, score


def decode(heatmaps: np.ndarray, box: tuple[int, int, int, int] | None = None, scale: tuple[float, float] = (1.0, 1.0),
           stride: int = STRIDE) -> np.ndarray:
    """(17, h, w) heatmaps -> (17, 3) keypoints (x, y, score) in output pixels: the maximum of each
    channel inside `box` (x0, y0, x1, y1 in heatmap pixels; None = all), mapped back through `stride`
    and `scale` (output pixels per input pixel, x and y)."""
    x0, y0, x1, y1 = box or (0, 0, heatmaps.shape[2], heatmaps.shape[1])
    out = np.zeros((len(heatmaps), 3), np.float32)
    for k, channel in enumerate(heatmaps):
        x, y, score = peak(channel[y0:y1, x0:x1])
        out[k] = ((x0 + x + 0.5) * stride * scale[0], (y0 + y + 0.5) * stride * scale[1], score)
    return out


def unmirror(heatmaps: np.ndarray) -> np.ndarray:
    """(17, h, w) heatmaps of a mirrored picture -> those of the picture: columns reversed, each left joint's
    channel swapped with its right twin (FLIP). Exact when the picture's width is a multiple of `STRIDE`
    (heatmap column i then mirrors to w - 1 - i); the crops of `top_down` are."""
    return heatmaps[list(FLIP), :, ::-1]


def crop_window(box: tuple[float, float, float, float], size: tuple[int, int],
                pad: float = CROP_PAD) -> tuple[float, float, float]:
    """The top-down crop of one person: `box` (x0, y0, x1, y1) in picture pixels -> the window
    (x0, y0, k) that `crop` cuts for an output of `size` (H, W): centred on the box, the box grown by
    `pad` and then widened or heightened to the output's aspect; k = output pixels per picture pixel."""
    (bx0, by0, bx1, by1), (H, W) = box, size
    w, h = max(bx1 - bx0, 1.0) * pad, max(by1 - by0, 1.0) * pad
    h = max(h, w * H / W)
    k = H / h
    return (bx0 + bx1) / 2 - W / k / 2, (by0 + by1) / 2 - H / k / 2, k


def crop(image: np.ndarray, window: tuple[float, float, float], size: tuple[int, int], fill=0,
         interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The picture inside `window` (x0, y0, k) resized to `size` (H, W); outside the picture is `fill`.
    A point x of the picture lands at (x - x0) * k (pixel centres at i + 0.5 on both sides)."""
    x0, y0, k = window
    if interpolation == cv2.INTER_LINEAR and k < 0.5:  # shrinking a lot: average, don't skip pixels
        image = cv2.resize(image, None, fx=2 * k, fy=2 * k, interpolation=cv2.INTER_AREA)
        x0, y0, k = 2 * k * x0, 2 * k * y0, 0.5
    m = np.float32([[k, 0, (0.5 - x0) * k - 0.5], [0, k, (0.5 - y0) * k - 0.5]])
    border = tuple(fill) if isinstance(fill, (tuple, list)) else fill
    return cv2.warpAffine(image, m, (size[1], size[0]), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border)


def uncrop(points: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
    """(N, 2+) x, y of a `crop` output -> of the picture (the other columns are kept)."""
    x0, y0, k = window
    out = np.array(points, np.float32, copy=True)
    out[:, 0] = out[:, 0] / k + x0
    out[:, 1] = out[:, 1] / k + y0
    return out


def person_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) in the mask's pixels of the connected regions of an (H, W) bool mask,
    largest first; regions under MIN_REGION of the picture are dropped."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [(x, y, x + w, y + h) for x, y, w, h, area in stats[1:].tolist() if area >= MIN_REGION * mask.size]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def top_down(rgb: np.ndarray, person: np.ndarray, heatmaps_of, size: tuple[int, int],
             max_people: int = MAX_PEOPLE) -> list[dict]:
    """One skeleton per person region of the (H, W) bool mask `person` of the picture `rgb`: the region's
    box is cropped (`crop_window`, at `size` (H, W)), `heatmaps_of(crop)` gives the crop's (17, h, w)
    peak probabilities at STRIDE, and each channel's maximum is mapped back to the picture (a maximum in
    the crop's padding to the picture's nearest edge). Returns
    [{"keypoints": (17, 3) x, y, score in picture pixels, "box": (x0, y0, x1, y1), "score": mean}], largest first."""
    people = []
    for box in person_boxes(person)[:max_people]:
        window = crop_window(box, size)
        keypoints = uncrop(decode(heatmaps_of(crop(rgb, window, size, PAD_COLOR))), window)
        np.clip(keypoints[:, :2], 0, (rgb.shape[1], rgb.shape[0]), out=keypoints[:, :2])  # the crop may pad
        people.append({"keypoints": keypoints, "box": tuple(float(v) for v in box),
                       "score": float(keypoints[:, 2].mean())})
    return people


def to_coco(people: list[dict], image_id: int | str = 0, min_score: float = 0.1) -> list[dict]:
    """COCO keypoint results: [{"image_id", "category_id": 1, "keypoints": [x, y, v] * 17, "score",
    "bbox"}], v = 2 where the keypoint's score is at least `min_score`, else 0 (the score is kept apart)."""
    results = []
    for p in people:
        flat = []
        for x, y, s in p["keypoints"]:
            flat += [round(float(x), 2), round(float(y), 2), 2 if s >= min_score else 0]
        x0, y0, x1, y1 = p["box"]
        results.append({"image_id": image_id, "category_id": 1, "keypoints": flat, "score": round(p["score"], 4),
                        "keypoint_scores": [round(float(s), 4) for s in p["keypoints"][:, 2]],
                        "bbox": [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)]})
    return results


def draw_skeleton(rgb: np.ndarray, people: list[dict], min_score: float = 0.1) -> np.ndarray:
    """The picture with each person's bones (lines) and joints (dots) drawn; keypoints under `min_score` skipped."""
    out = rgb.copy()
    thickness = max(2, round(max(rgb.shape[:2]) / 300))
    for i, p in enumerate(people):
        colour = tuple(int(c) for c in cv2.applyColorMap(np.uint8([[40 + 70 * i % 215]]), cv2.COLORMAP_TURBO)[0, 0][::-1])
        k = p["keypoints"]
        for a, b in SKELETON:
            if k[a, 2] >= min_score and k[b, 2] >= min_score:
                cv2.line(out, (int(k[a, 0]), int(k[a, 1])), (int(k[b, 0]), int(k[b, 1])), colour, thickness, cv2.LINE_AA)
        for x, y, s in k:
            if s >= min_score:
                cv2.circle(out, (int(x), int(y)), thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
    return out
