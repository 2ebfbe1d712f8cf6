"""What turns a video's frames into alphas: the predictor itself, a `PersonTracker` around it (a crop
around the person), or a `RecurrentSegmenter` (a recurrent model carrying its state). Each has
`predict_batch(images, batch_size)` for consecutive frames; `make_segmenter` picks one. A
`LandmarkRecorder` (a multi-task model) also keeps each frame's skeletons."""
from __future__ import annotations

import math

import cv2
import numpy as np

from personseg.predict import Predictor, StepState


class PersonTracker:
    """Detect on the full frame, then segment only a crop around the person: the box of the previous
    mask grown by `margin` of its size on each side, widened to the frame's aspect ratio and to at least
    the model's own pixel budget (so the model sees the person at up to 1:1 pixels, never magnified
    beyond that, with the surroundings it was trained to expect). A small, far person is then seen in
    far more detail than in the downscaled full frame. The full frame is searched again every
    `redetect_every` frames and whenever the mask shrinks below `min_area` of the frame (track lost).
    Outside the crop the alpha is 0. When the full frame shows no one, it is searched once more in
    `tiles` x `tiles` overlapping tiles (each seen at tiles-fold detail; at most once per
    `redetect_every` frames, so an empty scene costs little): people too small to see in the whole
    frame are found that way.

    Batches share one crop (the box after the previous batch), so keep `margin` larger than a batch's
    motion. Someone entering far from the tracked box is found at the next re-detection.
    """

    def __init__(self, predictor: Predictor, margin: float = 0.5, redetect_every: int = 30,
                 min_area: float = 0.0005, threshold: float | None = None, tiles: int = 2):
        self.predictor = predictor
        self.margin, self.redetect_every, self.min_area, self.tiles = margin, redetect_every, min_area, tiles
        self.threshold = predictor.threshold if threshold is None else threshold
        self.reset()

    def reset(self) -> None:
        self.box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1
        self.size: tuple[int, int] | None = None
        self.since_detection = 0
        self.since_tiled = self.redetect_every  # frames since the last tiled search
        self.detections = 0  # full-frame runs, for tests and benchmarks

    def predict_batch(self, images: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Alphas (H, W) float32 for consecutive frames of one video."""
        alphas: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if chunk[0].shape[:2] != self.size or any(im.shape != chunk[0].shape for im in chunk):
                self.reset()
                self.size = chunk[0].shape[:2]
            if self.box is None or self.since_detection >= self.redetect_every:
                chunk_alphas = self.predictor.predict_batch(chunk, batch_size)
                self.since_detection, self.detections = 0, self.detections + 1
                if self.tiles > 1 and self.since_tiled >= self.redetect_every and not self._found(chunk_alphas[-1]):
                    tiled = self._tiled(chunk, batch_size)
                    chunk_alphas = [np.maximum(a, b) for a, b in zip(chunk_alphas, tiled)]
                    self.since_tiled = 0
            else:
                x0, y0, x1, y1 = self.box
                crops = self.predictor.predict_batch([im[y0:y1, x0:x1] for im in chunk], batch_size)
                chunk_alphas = []
                for crop in crops:
                    alpha = np.zeros(self.size, np.float32)
                    alpha[y0:y1, x0:x1] = crop
                    chunk_alphas.append(alpha)
            self.since_detection += len(chunk)
            self.since_tiled += len(chunk)
            self.box = self._box(chunk_alphas[-1])
            alphas += chunk_alphas
        return alphas

    def _tiled(self, images: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        """Alphas from `tiles` x `tiles` overlapping tiles of each image (a tile spans 1.1 / tiles of a side)."""
        height, width = images[0].shape[:2]
        th, tw = math.ceil(1.1 * height / self.tiles), math.ceil(1.1 * width / self.tiles)
        origins = [(round(j * (height - th) / (self.tiles - 1)), round(i * (width - tw) / (self.tiles - 1)))
                   for j in range(self.tiles) for i in range(self.tiles)]
        crops = self.predictor.predict_batch([im[y:y + th, x:x + tw] for im in images for y, x in origins],
                                             batch_size)
        alphas = []
        for k in range(len(images)):
            alpha = np.zeros((height, width), np.float32)
            for (y, x), crop in zip(origins, crops[k * len(origins):(k + 1) * len(origins)]):
                np.maximum(alpha[y:y + th, x:x + tw], crop, out=alpha[y:y + th, x:x + tw])
            alphas.append(alpha)
        return alphas

    def _found(self, alpha: np.ndarray) -> bool:
        return (alpha >= self.threshold).mean() >= self.min_area

    def _box(self, alpha: np.ndarray) -> tuple[int, int, int, int] | None:
        """The crop for the next frames, or None (search the full frame): lost, or the crop would be it."""
        person = alpha >= self.threshold
        if person.mean() < self.min_area:
            return None
        height, width = alpha.shape
        # the largest region and those at least a quarter its size: specks on the background do not count
        _, _, stats, _ = cv2.connectedComponentsWithStats(person.view(np.uint8), connectivity=8)
        regions = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= 0.25 * stats[1:, cv2.CC_STAT_AREA].max()]
        x0, y0 = regions[:, 0].min(), regions[:, 1].min()
        x1, y1 = (regions[:, 0] + regions[:, 2]).max(), (regions[:, 1] + regions[:, 3]).max()
        box_w = (x1 - x0) * (1 + 2 * self.margin)
        box_h = (y1 - y0) * (1 + 2 * self.margin)
        aspect = width / height
        box_w, box_h = max(box_w, box_h * aspect), max(box_h, box_w / aspect)  # the frame's shape
        budget_w, budget_h = self.predictor.spec.size
        min_w = math.sqrt(budget_w * budget_h * aspect)  # the model's pixel budget at the frame's shape
        if box_w < min_w:
            box_w, box_h = min_w, min_w / aspect
        if box_w >= 0.8 * width:  # hardly smaller than the frame: not worth a crop
            return None
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        x0 = int(round(min(max(cx - box_w / 2, 0), width - box_w)))
        y0 = int(round(min(max(cy - box_h / 2, 0), height - box_h)))
        return x0, y0, min(width, x0 + int(round(box_w))), min(height, y0 + int(round(box_h)))


class RecurrentSegmenter:
    """Runs a recurrent model (`predictor.recurrent`) frame after frame with `Predictor.step`, carrying
    its state; the state restarts when the frame size changes."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.reset()

    def reset(self) -> None:
        self.state: StepState | None = None

    def predict_batch(self, images: list[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
        alphas = []
        for rgb in images:
            alpha, self.state = self.predictor.step(rgb, self.state)
            alphas.append(alpha)
        return alphas


def make_segmenter(predictor: Predictor, track: bool = False, threshold: float | None = None,
                   landmarks: bool = False):
    """The per-frame predictor, a `PersonTracker` around it, a `RecurrentSegmenter` for recurrent
    models, or with `landmarks` a `LandmarkRecorder`; each has `predict_batch(images, batch_size)`."""
    if landmarks:
        if track:
            raise ValueError("--save-landmarks and --track cannot go together: the skeletons need the whole frame")
        return LandmarkRecorder(predictor)
    if getattr(predictor, "recurrent", False):
        if track:
            raise ValueError("--track needs a per-frame model; recurrent models see the whole frame")
        return RecurrentSegmenter(predictor)
    return PersonTracker(predictor, threshold=threshold) if track else predictor


class LandmarkRecorder:
    """The predictor of a multi-task model (`--model parts`) that also keeps each frame's skeletons.

    Skeletons are smoothed like the masks are: each person is matched to the nearest skeleton of the
    previous frame (box centres closer than half the box's longer side) and its keypoints move by an
    exponential average, `smoothing` of the old position plus the rest of the new one (where both
    were found); a person with no match starts fresh. `write(path)` saves one JSON line per frame:
    {"frame": index, "people": COCO keypoint results (personseg.keypoints.to_coco)}."""

    def __init__(self, predictor: Predictor, smoothing: float = 0.5, min_score: float = 0.1):
        if not predictor.has_heads:
            raise ValueError("--save-landmarks needs a model with landmark heads: --model parts")
        self.predictor, self.smoothing, self.min_score = predictor, smoothing, min_score
        self.frames: list[list[dict]] = []

    def reset(self) -> None:
        self.frames = []

    def predict_batch(self, images: list[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
        alphas = []
        for rgb in images:
            prediction = self.predictor.predict_all(rgb)
            self.frames.append(self._smooth(prediction["people"], self.frames[-1] if self.frames else []))
            alphas.append(prediction["alpha"])
        return alphas

    def _smooth(self, people: list[dict], previous: list[dict]) -> list[dict]:
        def centre(p):
            x0, y0, x1, y1 = p["box"]
            return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(x1 - x0, y1 - y0)

        out = []
        for person in people:
            (c, size), k = centre(person), person["keypoints"].copy()
            near = [(np.linalg.norm(centre(q)[0] - c), q) for q in previous]
            distance, match = min(near, key=lambda item: item[0], default=(math.inf, None))
            if match is not None and distance < size / 2:
                both = (k[:, 2] >= self.min_score) & (match["keypoints"][:, 2] >= self.min_score)
                k[both, :2] = self.smoothing * match["keypoints"][both, :2] + (1 - self.smoothing) * k[both, :2]
            out.append({**person, "keypoints": k})
        return out

    def write(self, path) -> None:
        import json

        from personseg.keypoints import to_coco
        from personseg.tempfiles import atomic_write

        with atomic_write(path) as temp, open(temp, "x", encoding="utf-8") as f:
            for index, people in enumerate(self.frames):
                f.write(json.dumps({"frame": index, "people": to_coco(people, image_id=index)}) + "\n")
