"""Video: read frames, segment them, keep the masks steady over time, write the result.

Three stages overlap in threads joined by bounded queues, so memory stays constant whatever the length:
decode (PyAV / image files / OpenCV camera) -> segment in batches (`Predictor.predict_batch`, a
`PersonTracker` or a recurrent model) and a temporal filter (`TemporalMedian`, `TemporalFilter`) ->
render and encode (main thread).

Decisions, in the order a user meets them:

* Frames are segmented upright. A file's display matrix (phone videos) is read per frame; frames are
  turned by its multiple of 90 degrees before the model sees them, the result is turned back, and the
  output stream gets the same rotation, so players show it as they showed the input. Mirror flags and
  angles that are not multiples of 90 degrees are not preserved. PNG outputs (masks, alpha) are upright.
* Timing: every output frame keeps its input frame's pts, time base and duration (variable frame rate
  survives; the encoder's time base is the input stream's). One output frame per decoded frame.
* Audio: the first audio stream's packets are copied unchanged (no re-encoding) into the output file.
  PNG folders carry no audio.
* H.264 needs even sizes (yuv420p); an odd width or height is padded by one edge-copied pixel.
* Outputs are written under a temporary name beside the final path and renamed at the end. If the input
  turns out corrupt or truncated part-way, what was processed is finalized (a valid, playable file or a
  folder of whole PNGs) and kept as `NAME.partial.EXT` (`NAME.partial` for folders); the final path is
  never written, and a `VideoError` says where the partial output is. Nothing is kept when no frame was
  read.
"""
from __future__ import annotations

import math
import os
import queue
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator

import av
import cv2
import numpy as np

from personseg import render
from personseg.tempfiles import remove_stale, sigterm_exits, temp_path
from personseg.predict import Predictor, model_size, preprocess, sigmoid

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm"}  # read (inputs, backgrounds)
OUTPUT_EXTENSIONS = {".mp4", ".mov", ".mkv", ".m4v"}  # written: containers that take H.264 and qtrle
OUTPUT_KINDS = ("composite", "alpha", "masks")
TEMPORAL_MODES = ("off", "median", "ema", "flow")
DEFAULT_FPS = 30
# H.264 for people to watch: near-transparent quality, a preset fast enough not to slow the pipeline.
H264_OPTIONS = {"crf": "18", "preset": "veryfast"}


class VideoError(Exception):
    """An input that cannot be read (corrupt, truncated, not a video) or an output that cannot be written.
    The message is one line; `partial` is the path of what was kept, if anything."""

    def __init__(self, message: str, partial: Path | None = None):
        super().__init__(message)
        self.partial = partial


# --------------------------------------------------------------------------------------------- reading

@dataclass
class Frame:
    """One decoded frame. `rgb` is (H, W, 3) uint8, upright; `rotation` the counter-clockwise degrees
    (a multiple of 90) the stored picture was turned by to get it; `pts` and `duration` count `time_base`."""
    index: int
    rgb: np.ndarray
    pts: int
    time_base: Fraction
    duration: int | None = None
    rotation: int = 0


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored picture counter-clockwise by `rotation` degrees (a multiple of 90)."""
    return np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation % 360 else image


def stored(image: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of `upright`: back to the orientation the file stores."""
    return np.ascontiguousarray(np.rot90(image, -(rotation // 90))) if rotation % 360 else image


def _reason(error: Exception) -> str:
    """A PyAV error as a short phrase ('Invalid data found when processing input')."""
    return getattr(error, "strerror", None) or str(error).splitlines()[0]


class FileSource:
    """A video file, decoded with PyAV. Iterating yields `Frame`s and the first audio stream's packets
    (av.Packet, to be copied), in file order. Raises `VideoError` on corrupt or truncated data, after
    yielding everything before it. `close()` when done: the output's audio stream is set up from the
    input's, which must stay open until then."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: not a readable video ({_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path}: has no video stream")
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        self.rate = self.video.guessed_rate or self.video.average_rate or Fraction(DEFAULT_FPS)
        self.frames = self.video.frames  # from the header; 0 when the container does not say

    def __iter__(self) -> Iterator[Frame | Any]:
        index = packets = 0
        streams = [s for s in (self.video, self.audio) if s is not None]
        try:
            for packet in self.container.demux(*streams):
                if packet.stream is self.audio:
                    if packet.size and packet.dts is not None:  # the demuxer ends each stream with an empty packet
                        yield packet
                    continue
                packets += bool(packet.size)
                for frame in packet.decode():
                    yield self._frame(frame, index)
                    index += 1
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: corrupt or truncated video, unreadable after {index} frames "
                             f"({_reason(e)})") from None
        if self.frames and packets < self.frames:
            # the decoded count, not `packets`: it is the number of frames the partial output holds
            raise VideoError(f"{self.path}: truncated video, it ends after {index} of the {self.frames} "
                             "frames its header announces")

    def close(self) -> None:
        self.container.close()

    def _frame(self, frame, index: int) -> Frame:
        rotation = round((frame.rotation or 0) / 90) % 4 * 90
        time_base = frame.time_base or self.video.time_base
        pts = frame.pts if frame.pts is not None else round(index / self.rate / time_base)
        return Frame(index, upright(frame.to_ndarray(format="rgb24"), rotation), pts, time_base,
                     frame.duration or None, rotation)


class FolderSource:
    """A folder of images, sorted by name, at `fps` frames per second (the first `limit` only, if given).
    Every image must have the size of the first."""

    def __init__(self, folder: str | Path, fps: float = DEFAULT_FPS, limit: int | None = None):
        from personseg.imageio import list_inputs

        self.path = Path(folder)
        self.files = list_inputs([str(self.path)])[:limit]
        if not self.files:
            raise VideoError(f"{self.path}: no image files in this folder")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.frames = len(self.files)
        self.audio = None

    def __iter__(self) -> Iterator[Frame]:
        from personseg.imageio import ImageReadError, read_image

        size = None
        for index, path in enumerate(self.files):
            try:
                rgb = read_image(path)
            except ImageReadError as e:
                raise VideoError(f"{e.path}: frame {index}: {e.reason}") from None
            if size is not None and rgb.shape != size:
                raise VideoError(f"{path}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                                 f"{size[1]}x{size[0]}; every frame of a folder must have the same size")
            size = rgb.shape
            yield Frame(index, rgb, index, 1 / self.rate, 1)

    def close(self) -> None:
        pass


class CameraSource:
    """An OpenCV camera (VideoCapture index) until it stops or Ctrl-C; pts are capture times in ms."""

    def __init__(self, index: int, fps: float | None = None):
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise VideoError(f"camera {index}: cannot be opened (is it connected and free?)")
        self.path = Path(f"camera{index}")
        self.rate = Fraction(fps or self.capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS).limit_denominator(1001)
        self.frames = 0
        self.audio = None
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        start, index = time.perf_counter(), 0
        try:
            while not self.stop.is_set():
                ok, bgr = self.capture.read()
                if not ok:
                    break
                pts = round((time.perf_counter() - start) * 1000)
                yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pts, Fraction(1, 1000))
                index += 1
        finally:
            self.capture.release()

    def close(self) -> None:
        self.stop.set()
        self.capture.release()


def open_source(source: str | Path | int, fps: float | None = None) -> FileSource | FolderSource | CameraSource:
    """A video file, a folder of frames, or a camera (an int, or a string of digits). Raises
    FileNotFoundError for a missing path, VideoError for one that is not a readable video."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit() and not Path(source).exists()):
        return CameraSource(int(source), fps)
    path = Path(source)
    if path.is_dir():
        return FolderSource(path, fps or DEFAULT_FPS)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return FileSource(path)


class BackgroundVideo:
    """A background video's frames, upright, looped as long as needed (decoded on demand, not stored)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._source: FileSource | None = None
        self._frames: Iterator[Frame] | None = None
        FileSource(self.path).close()  # fail early on an unreadable file

    def next(self) -> np.ndarray:
        for _ in range(2):
            if self._frames is None:
                self._source = FileSource(self.path)
                self._frames = (item for item in self._source if isinstance(item, Frame))
            frame = next(self._frames, None)
            if frame is not None:
                return frame.rgb
            self.close()  # the end: loop
        raise VideoError(f"{self.path}: the background video has no frames")

    def close(self) -> None:
        if self._source is not None:
            self._frames = None
            self._source.close()
            self._source = None


def parse_background(value: str) -> render.Background | BackgroundVideo:
    """`render.parse_background` plus video files (by extension), which play behind the person, looped."""
    if Path(value).suffix.lower() in VIDEO_EXTENSIONS and Path(value).is_file():
        return BackgroundVideo(value)
    return render.parse_background(value)


# ---------------------------------------------------------------------------------------- segmenting

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
        budget_w, budget_h = self.predictor.input_size
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
    """Runs a recurrent checkpoint (`recurrent_*` models) frame after frame, carrying its state; the
    predictor supplies the preprocessing and upsampling. State restarts when the frame size changes."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.reset()

    def reset(self) -> None:
        self.state: list | None = None  # arrays (ONNX) or tensors (torch), as the backend returns them
        self.size: tuple[int, int] | None = None

    def predict_batch(self, images: list[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
        p = self.predictor
        alphas = []
        for rgb in images:
            h, w = model_size(*rgb.shape[:2], p.input_size)
            if (h, w) != self.size:
                self.state, self.size = None, (h, w)
            logits, self.state = p.run(preprocess([rgb], (h, w), p.mean, p.std), self.state)
            alphas.append(p.upsample(rgb, sigmoid(np.asarray(logits, np.float32)[0, 0])))
        return alphas


def is_recurrent(predictor: Predictor) -> bool:
    return str(predictor.info.get("arch", "")).startswith("recurrent")


def make_segmenter(predictor: Predictor, track: bool = False, threshold: float | None = None):
    """The per-frame predictor, a `PersonTracker` around it, or a `RecurrentSegmenter` for recurrent
    checkpoints; each has `predict_batch(images, batch_size)`."""
    if is_recurrent(predictor):
        if track:
            raise ValueError("--track needs a per-frame model; recurrent models see the whole frame")
        return RecurrentSegmenter(predictor)
    return PersonTracker(predictor, threshold=threshold) if track else predictor


class TemporalFilter:
    """Motion-aware exponential smoothing of person probabilities, frame after frame.

        out_t = p_t + w * (prev - p_t),  w = strength * exp(-(dI / sigma_image)^2) * exp(-(dp / sigma_prob)^2)

    `prev` is the previous output, dI the absolute difference of the (blurred, downscaled) gray frames
    and dp = |prev - p_t|. Where the picture is still and the model's output wobbles a little
    (flicker), w stays near `strength` and the wobble averages out; where the picture or the probability
    changes much (motion, someone arriving), w drops to 0 and the output is the current frame's: no
    ghost trail behind moving people. A still scene with a steady prediction is returned exactly.

    mode "flow" first warps `prev` (and the previous gray frame) to the current frame by dense optical
    flow (OpenCV Farneback at `work_width` pixels wide), so a person moving smoothly is smoothed too,
    not only the still parts. "ema" skips the flow: cheaper, and enough for mostly static shots.

    Then hysteresis on the mask the output will give at `threshold`: a pixel that was person stays
    person until its probability falls below threshold - `hysteresis`, a background pixel turns person
    only above threshold + `hysteresis` (such pixels get the threshold's value, or just under it). The
    smoothing alone removes little of the flicker a panning camera causes; the hysteresis removes the
    on/off wobble of pixels near the threshold (measured in benchmarks/video.py). 0 turns it off.
    """

    def __init__(self, mode: str = "ema", strength: float = 0.7, sigma_image: float = 10.0,
                 sigma_prob: float = 0.3, work_width: int = 320, threshold: float = 0.5, hysteresis: float = 0.2):
        if mode not in ("ema", "flow"):
            raise ValueError(f"temporal mode {mode!r}: choose ema or flow")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis {hysteresis}: expected a probability margin in [0, 1)")
        self.mode, self.strength = mode, strength
        self.sigma_image, self.sigma_prob, self.work_width = sigma_image, sigma_prob, work_width
        self.threshold, self.hysteresis = threshold, hysteresis
        self.reset()

    def reset(self) -> None:
        self.prev: np.ndarray | None = None
        self.prev_gray: np.ndarray | None = None

    def _gray(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.work_width / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = cv2.cvtColor(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        return cv2.GaussianBlur(gray, (0, 0), 1.0)

    def __call__(self, rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """rgb (H, W, 3) uint8 and the model's prob (H, W) in [0, 1] -> filtered (H, W) float32."""
        prob = np.asarray(prob, np.float32)
        gray = self._gray(rgb)
        if self.prev is None or self.prev.shape != prob.shape:
            self.prev, self.prev_gray = prob.copy(), gray
            return prob.copy()
        prev, prev_gray = self.prev, self.prev_gray
        if self.mode == "flow":
            # flow maps each current pixel to where it was: cur(x) ~ prev(x + flow(x))
            flow = cv2.calcOpticalFlowFarneback(gray, prev_gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            flow[np.abs(flow) < 0.01] = 0  # Farneback's ~1e-4 px noise on identical frames is no motion
            if flow.any():
                prev_gray = _warp(prev_gray.astype(np.float32), flow)
                prev = _warp(prev, cv2.resize(flow, prob.shape[::-1]) * (prob.shape[1] / gray.shape[1]))
        d_image = np.abs(gray.astype(np.float32) - prev_gray)
        d_image = cv2.resize(d_image, prob.shape[::-1], interpolation=cv2.INTER_LINEAR)
        d_prob = prev - prob
        w = self.strength * np.exp(-np.square(d_image / self.sigma_image) - np.square(d_prob / self.sigma_prob))
        out = prob + w * d_prob
        _hysteresis(out, prev, self.threshold, self.hysteresis)
        self.prev, self.prev_gray = out, gray
        return out

    def push(self, frame: Frame, prob: np.ndarray) -> list[tuple[Frame, np.ndarray]]:
        """The streaming form (see `smooth`): no delay, each frame comes straight back filtered."""
        return [(frame, self(frame.rgb, prob))]

    def flush(self) -> list[tuple[Frame, np.ndarray]]:
        return []


class TemporalMedian:
    """The median over a centred window of frames, then a little hysteresis: for video files.

        out_t = median(p_{t-r}, ..., p_{t+r}),  r = window // 2

    (frames past either end of the clip repeat the end frame). A person pixel that blinks off, or a
    background pixel that blinks on, for at most r frames is steadied, while a change that lasts, a
    moving edge included, comes through at the frame it happens: the median keeps a step in time where
    it is, where a causal smoothing (`TemporalFilter`) either lags behind it or lets the blink through.
    The price is r frames of delay: nothing for a file, r / fps seconds for a camera. Then hysteresis
    as in `TemporalFilter`, against the previous output.
    Measured on the shared DAVIS clips in benchmarks/video.py.
    """

    def __init__(self, window: int = 3, threshold: float = 0.5, hysteresis: float = 0.05):
        if window < 1 or window % 2 == 0:
            raise ValueError(f"median window {window}: expected an odd number of frames")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis {hysteresis}: expected a probability margin in [0, 1)")
        self.window, self.threshold, self.hysteresis = window, threshold, hysteresis
        self.reset()

    def reset(self) -> None:
        self.frames: list[Frame] = []  # pushed, waiting for the frames after them
        self.probs: list[np.ndarray] = []  # the last `window` probabilities
        self.count = 0  # frames pushed
        self.first = 0  # the frame index of probs[0]
        self.prev: np.ndarray | None = None

    def push(self, frame: Frame, prob: np.ndarray) -> list[tuple[Frame, np.ndarray]]:
        """Take the next frame; give back the frames whose window is now complete (none at first)."""
        prob = np.asarray(prob, np.float32)
        if self.probs and self.probs[-1].shape != prob.shape:  # a new size: a new shot
            return self.flush() + self.push(frame, prob)
        self.frames.append(frame)
        self.probs.append(prob)
        self.count += 1
        if len(self.probs) > self.window:
            self.probs.pop(0)
            self.first += 1
        return [self._emit()] if len(self.frames) > self.window // 2 else []

    def flush(self) -> list[tuple[Frame, np.ndarray]]:
        """The frames still waiting at the end of the clip."""
        done = [self._emit() for _ in range(len(self.frames))]
        self.reset()
        return done

    def _emit(self) -> tuple[Frame, np.ndarray]:
        """The oldest waiting frame over its window; frames past either end of the clip repeat the end one."""
        r, last = self.window // 2, self.count - 1
        i = self.count - len(self.frames)
        probs = [self.probs[min(max(j, 0), last) - self.first] for j in range(i - r, i + r + 1)]
        if len(probs) == 3:  # the median of three without a sort
            a, b, c = probs
            out = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
        else:
            out = np.median(np.stack(probs), axis=0).astype(np.float32)
        if self.prev is not None:
            _hysteresis(out, self.prev, self.threshold, self.hysteresis)
        self.prev = out
        return self.frames.pop(0), out


def _hysteresis(out: np.ndarray, prev: np.ndarray, threshold: float, margin: float) -> None:
    """In place: a pixel on the other side of `threshold` from `prev` only if at least `margin` past it
    (such pixels get the threshold's value, or just under it)."""
    if margin <= 0:
        return
    t = threshold
    m = min(margin, t, 1 - t)
    was_on = prev >= t
    out[was_on & (out < t) & (out >= t - m)] = t  # stays person
    out[~was_on & (out >= t) & (out < t + m)] = np.nextafter(np.float32(t), np.float32(0))  # stays background


def make_temporal(mode: str, threshold: float, hysteresis: float | None = None):
    """A fresh temporal filter for `mode` (None for "off"); `hysteresis` None: the mode's own default."""
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal mode {mode!r}: choose {', '.join(TEMPORAL_MODES)}")
    if mode == "off":
        return None
    kwargs = {} if hysteresis is None else {"hysteresis": hysteresis}
    if mode == "median":
        return TemporalMedian(threshold=threshold, **kwargs)
    return TemporalFilter(mode, threshold=threshold, **kwargs)


def smooth(items: Iterable[tuple[Frame, np.ndarray] | Any], temporal) -> Iterator[tuple[Frame, np.ndarray] | Any]:
    """(frame, alpha) pairs through a temporal filter's `push`/`flush`, in order; anything else (audio
    packets) passes straight through. On `VideoError` the frames still held are flushed, then it is raised."""
    try:
        for item in items:
            if isinstance(item, tuple):
                yield from temporal.push(*item)
            else:
                yield item
    except VideoError:
        yield from temporal.flush()
        raise
    yield from temporal.flush()


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at x + flow(x) (bilinear, borders replicated)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def segment_frames(items: Iterable[Frame | Any], segmenter, temporal=None,
                   batch_size: int = 4) -> Iterator[tuple[Frame, np.ndarray] | Any]:
    """`Frame`s in, (frame, alpha) out, in order, `batch_size` frames per model call, through the
    `temporal` filter if any (`make_temporal`); anything else (audio packets) passes straight through.
    If the input raises `VideoError`, the frames read before it are still segmented and yielded, then
    the error is raised."""
    if temporal is not None:
        yield from smooth(segment_frames(items, segmenter, None, batch_size), temporal)
        return
    batch: list[Frame] = []

    def flush() -> Iterator[tuple[Frame, np.ndarray]]:
        alphas = segmenter.predict_batch([f.rgb for f in batch], batch_size=batch_size) if batch else []
        yield from zip(batch, alphas)
        batch.clear()

    try:
        for item in items:
            if isinstance(item, Frame):
                batch.append(item)
                if len(batch) >= batch_size:
                    yield from flush()
            else:
                yield item
    except VideoError:
        yield from flush()
        raise
    yield from flush()


def _in_thread(iterable: Iterable, maxsize: int) -> Iterator:
    """Iterate `iterable` in a daemon thread, at most `maxsize` items ahead; its exceptions are raised
    here, after the items produced before them. Leaving the loop early stops the thread."""
    items: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(("error", e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------------ metrics

def video_metrics(pred_masks: Iterable[np.ndarray], gt_masks: Iterable[np.ndarray]) -> dict[str, float]:
    """Temporal quality of a clip's masks ((H, W) bool or 0/255 each, same length and size).

    J: the mean over frames of the IoU (DAVIS region similarity; a frame where both masks are empty
    counts 1). iou: the IoU of the summed counts. flicker: of the pixels whose ground truth keeps its
    label from one frame to the next, the share whose predicted label changes (0 for a steady
    prediction; counts summed over the clip, divided once). Streams: one frame pair in memory.
    """
    ious: list[float] = []
    tp = union = changed = stable = 0
    prev_pred = prev_gt = None
    for pred, gt in zip(pred_masks, gt_masks, strict=True):
        pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        inter, uni = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        ious.append(inter / uni if uni else 1.0)
        tp, union = tp + inter, union + uni
        if prev_pred is not None:
            same_gt = prev_gt == gt
            stable += int(np.count_nonzero(same_gt))
            changed += int(np.count_nonzero(same_gt & (prev_pred != pred)))
        prev_pred, prev_gt = pred, gt
    return {"J": float(np.mean(ious)) if ious else float("nan"), "iou": tp / union if union else 1.0,
            "flicker": changed / stable if stable else 0.0, "frames": len(ious)}


# ------------------------------------------------------------------------------------------ writing

class _Staged:
    """An output file or folder written under a temporary name beside `path`, renamed into place at the end."""

    def __init__(self, path: Path, folder: bool):
        self.path, self.folder = path, folder
        # keep the extension: FFmpeg picks the container format from it
        self.temp = temp_path(path, path.stem, path.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path, path.stem, path.suffix)  # left by a killed run
        if folder:
            self.temp.mkdir()

    def partial_path(self, n: int = 1) -> Path:
        """NAME.partial.EXT, or NAME.partial-N.EXT (N >= 2) when that name is taken."""
        tag = "partial" if n == 1 else f"partial-{n}"
        return self.path.with_name(f"{self.path.stem}.{tag}{self.path.suffix}")

    def commit(self, overwrite: bool) -> Path:
        return self._move(self.path, overwrite)

    def keep_partial(self) -> Path:
        """Keep what was written under the first free partial name: an existing path (the input, an
        earlier partial, a user's folder) is never replaced, since this run did not create it."""
        for n in range(1, 1000):
            target = self.partial_path(n)
            try:
                if self.folder:
                    target.mkdir()  # claims the name atomically; fails if anything is there
                    os.replace(self.temp, target)  # onto our own empty folder
                else:
                    try:
                        os.link(self.temp, target)  # fails if anything is there; never replaces
                        self.temp.unlink()
                    except FileExistsError:
                        raise
                    except OSError:  # no hard links on this file system (FAT, some mounts)
                        if target.exists() or target.is_symlink():
                            raise FileExistsError(target) from None
                        os.replace(self.temp, target)
                return target
            except FileExistsError:
                continue
        raise VideoError(f"{self.partial_path()}: 999 partial outputs exist already; remove some")

    def _move(self, target: Path, overwrite: bool) -> Path:
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists (use --overwrite to replace it)")
        if self.folder and target.is_dir():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(self.temp, target)
            shutil.rmtree(old)
        else:
            os.replace(self.temp, target)
        return target

    def discard(self) -> None:
        if self.folder:
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)


class VideoWriter:
    """Encode frames into a video file with PyAV, copying audio packets from `audio` (an input stream).

    Opens on the first frame (its size, rotation and time base set up the stream; audio packets that come
    earlier wait). `write(image, frame)` takes the upright (H, W, 3) RGB or (H, W, 4) RGBA picture and
    the input `Frame` whose timing and rotation it keeps."""

    def __init__(self, path: Path, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 options: dict | None = None, rate: Fraction | None = None, audio=None):
        self.path, self.codec, self.pix_fmt = path, codec, pix_fmt
        self.options = dict(H264_OPTIONS if options is None and codec == "libx264" else options or {})
        self.rate, self.audio = rate or Fraction(DEFAULT_FPS), audio
        self.container = self.stream = self.audio_out = None
        self.waiting_audio: list = []
        self.frames = 0

    def _open(self, height: int, width: int, frame: Frame) -> None:
        self.container = av.open(str(self.path), "w")
        try:
            stream = self.container.add_stream(self.codec, rate=self.rate, options=self.options)
            stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
            stream.time_base = stream.codec_context.time_base = frame.time_base
            if frame.rotation:
                stream.set_display_rotation(frame.rotation)
            self.stream = stream
            if self.audio is not None:
                self.audio_out = self.container.add_stream_from_template(self.audio)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot set up the output ({_reason(e)}); "
                             "try a .mkv or .mov output") from None

    def write(self, image: np.ndarray, frame: Frame) -> None:
        image = stored(image, frame.rotation)
        if self.pix_fmt == "yuv420p" and (image.shape[0] % 2 or image.shape[1] % 2):
            image = cv2.copyMakeBorder(image, 0, image.shape[0] % 2, 0, image.shape[1] % 2, cv2.BORDER_REPLICATE)
        if self.container is None:
            self._open(image.shape[0], image.shape[1], frame)
            for packet in self.waiting_audio:
                self.mux_audio(packet)
            self.waiting_audio.clear()
        video_frame = av.VideoFrame.from_ndarray(image, format="rgba" if image.shape[2] == 4 else "rgb24")
        video_frame.pts, video_frame.time_base = frame.pts, frame.time_base
        if frame.duration:
            video_frame.duration = frame.duration
        self.container.mux(self.stream.encode(video_frame))
        self.frames += 1

    def mux_audio(self, packet) -> None:
        if self.container is None:
            self.waiting_audio.append(packet)
        elif self.audio_out is not None:
            packet.stream = self.audio_out
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and write the trailer: the file is complete and playable."""
        if self.container is not None:
            try:
                self.container.mux(self.stream.encode(None))
            finally:
                self.container.close()
                self.container = None


class PngFolderWriter:
    """Write each frame as FOLDER/NNNNN.png (the 0-based frame index, five digits)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> None:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        path = self.folder / f"{frame.index:05d}.png"
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"{path}: cannot write the PNG (disk full or no permission?)")
        self.frames += 1

    def mux_audio(self, packet) -> None:
        pass  # a folder of images has no audio

    def close(self) -> None:
        pass


@dataclass
class VideoSummary:
    frames: int
    seconds: float
    outputs: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def output_is_folder(output: Path, output_kind: str) -> bool:
    """alpha output: a .mov file (QuickTime Animation with alpha) or else a folder of RGBA PNGs."""
    return output_kind == "alpha" and output.suffix.lower() != ".mov"


def check_outputs(output: Path, output_kind: str, save_masks: Path | None, overwrite: bool,
                  source_path: Path | None = None) -> None:
    """Raise ValueError or FileExistsError (with the fix) before any work is done."""
    if output_kind not in OUTPUT_KINDS:
        raise ValueError(f"output kind {output_kind!r}: choose {', '.join(OUTPUT_KINDS)}")
    if not output_is_folder(output, output_kind) and output.suffix.lower() not in OUTPUT_EXTENSIONS:
        hint = " (or a folder name for PNGs)" if output_kind == "alpha" else ""
        raise ValueError(f"{output}: the output needs a video extension ({', '.join(sorted(OUTPUT_EXTENSIONS))}){hint}")
    folders = {save_masks, output if output_is_folder(output, output_kind) else None} - {None}
    for path in filter(None, [output, save_masks]):
        if source_path is not None:
            src, dst = source_path.resolve(), path.resolve()
            if dst == src or dst in src.parents:
                raise ValueError(f"{path}: writing there would replace the input; choose another path")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
        if path.exists() and (path in folders) != path.is_dir():
            raise ValueError(f"{path} exists and is {'not ' if path in folders else ''}a folder; choose another path")
        if path in folders and path.is_dir() and any(p.suffix.lower() != ".png" for p in path.iterdir()):
            # --overwrite replaces the whole folder: only ever one of our PNG outputs
            raise ValueError(f"{path} holds files other than PNGs; --overwrite only replaces a folder of "
                             "PNG frames, choose another folder")
    if save_masks is not None and save_masks.resolve() == output.resolve():
        raise ValueError("--save-masks and -o must be different paths")


def process_video(source: str | Path | int, output: str | Path, predictor: Predictor, *,
                  background: render.Background | BackgroundVideo = "blur", output_kind: str = "composite",
                  save_masks: str | Path | None = None, temporal: str = "off", hysteresis: float | None = None,
                  track: bool = False, batch_size: int = 4, threshold: float | None = None, overwrite: bool = False,
                  fps: float | None = None, progress: bool = False, queue_size: int | None = None) -> VideoSummary:
    """Segment a video (file, folder of frames or camera index) into `output`; see the module doc.

    output_kind "composite": the person over `background` (H.264 mp4/mov/mkv, audio copied); "masks": the
    0/255 mask as a video (audio copied); "alpha": RGBA, a .mov (QuickTime Animation) or a PNG folder.
    `save_masks`: a folder for 0/255 PNG masks named by 0-based frame index. `temporal`: off, median
    (`TemporalMedian`), ema or flow (`TemporalFilter`), with `hysteresis` (None: the mode's default).
    `track`: segment a crop around the person (`PersonTracker`). `fps` is the frame rate of folders and
    cameras. Raises `VideoError` (bad input, with `partial` set if
    something was kept), ValueError, FileNotFoundError or FileExistsError (bad arguments, nothing
    written).
    """
    output = Path(output)
    save_masks = Path(save_masks) if save_masks is not None else None
    threshold = predictor.threshold if threshold is None else threshold
    smoother = make_temporal(temporal, threshold, hysteresis)
    segmenter = make_segmenter(predictor, track, threshold)
    src = open_source(source, fps)
    try:
        check_outputs(output, output_kind, save_masks, overwrite, None if isinstance(src, CameraSource) else src.path)
        with sigterm_exits():  # SIGTERM removes the temporary outputs, as Ctrl-C does
            return _run(src, output, output_kind, save_masks, segmenter, smoother, background, threshold,
                        batch_size, overwrite, progress, queue_size or 2 * batch_size)
    finally:
        src.close()
        if isinstance(background, BackgroundVideo):
            background.close()


def _run(src, output: Path, output_kind: str, save_masks: Path | None, segmenter, smoother, background,
         threshold: float, batch_size: int, overwrite: bool, progress: bool, queue_size: int) -> VideoSummary:
    """The pipeline of `process_video`, once its arguments are checked: stage, stream, finalize."""
    staged: list[_Staged] = []
    writers: list = []
    if output_is_folder(output, output_kind):
        staged.append(_Staged(output, folder=True))
        writers.append(PngFolderWriter(staged[-1].temp))
    else:
        staged.append(_Staged(output, folder=False))
        codec = ("qtrle", "argb") if output_kind == "alpha" else ("libx264", "yuv420p")
        writers.append(VideoWriter(staged[-1].temp, *codec, rate=src.rate, audio=src.audio))
    if save_masks is not None:
        staged.append(_Staged(save_masks, folder=True))
        writers.append(PngFolderWriter(staged[-1].temp))

    def picture(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        if output_kind == "alpha":
            return render.cutout(rgb, alpha)
        if output_kind == "masks":
            return np.repeat(render.mask(alpha, threshold)[..., None], 3, axis=2)
        back = background.next() if isinstance(background, BackgroundVideo) else background
        return render.replace_background(rgb, alpha, back)

    from tqdm import tqdm

    bar = tqdm(total=src.frames or None, unit="frame", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    start, frames, failure = time.perf_counter(), 0, None
    pipeline = _in_thread(segment_frames(_in_thread(src, queue_size), segmenter, smoother, batch_size), queue_size)
    try:
        try:
            for item in pipeline:
                if not isinstance(item, tuple):
                    for writer in writers:
                        writer.mux_audio(item)
                    continue
                frame, alpha = item
                writers[0].write(picture(frame.rgb, alpha), frame)
                if save_masks is not None:
                    writers[1].write(render.mask(alpha, threshold), frame)
                frames += 1
                bar.update()
        except KeyboardInterrupt:
            if not isinstance(src, CameraSource):
                failure = VideoError(f"{src.path}: interrupted after {frames} frames")
        except VideoError as e:
            failure = e
        except (OSError, av.FFmpegError) as e:
            raise VideoError(f"{output}: cannot write the output ({_reason(e)})") from None
        finally:
            pipeline.close()
            bar.close()
            for writer in writers:
                writer.close()
    except BaseException:
        for s in staged:
            s.discard()
        raise
    seconds = time.perf_counter() - start

    if failure is not None or frames == 0:
        if frames == 0:
            for s in staged:
                s.discard()
            raise failure or VideoError(f"{src.path}: no frames to read")
        kept = [s.keep_partial() for s in staged]
        raise VideoError(f"{failure}; the {frames} frames before it are in {', '.join(map(str, kept))}",
                         partial=kept[0])
    try:
        outputs = [s.commit(overwrite) for s in staged]
    except FileExistsError:
        for s in staged:
            s.discard()
        raise
    return VideoSummary(frames, seconds, outputs)
