"""Temporal filters: keep a video's masks steady over time. `TemporalMedian` (a centred median, for
files), `TemporalFilter` (motion-aware smoothing, no delay, for cameras), both with hysteresis at the
mask threshold; `make_temporal` picks one by name, `smooth` runs one over a stream. Measured on the
shared DAVIS clips in benchmarks/video.py."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from personseg.video.io import Frame, VideoError

TEMPORAL_MODES = ("off", "median", "ema", "flow")


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
