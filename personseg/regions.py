"""Region filter: drop the connected person regions of a low-resolution probability that no confident
core backs (numpy and OpenCV, no torch).

A region is an 8-connected component of `prob >= support`. It is kept when its score reaches `level`
and its area is at least `min_share` of the picture; a dropped region's pixels are set to 0, so the
guided-filter upsampling after it sees background there. The score of a region is its `stat`:
"peak" (the highest probability: hysteresis thresholding, Canny 1986, a weak fringe joined to a
confident core survives whole), "mean" (the mean probability over the region: SOLOv2's "maskness",
Wang et al. 2020) or "p90" (its 90th percentile: a peak that a few pixels cannot fake).

With `scope` "image" the same test is an image-level presence gate instead: every region is kept when
at least one region passes, none when no region does (people near a confident person survive).

Run it on the model's probability before upsampling (about 300x200 pixels: well under a millisecond),
with `support` at or below the predictor's threshold. benchmarks/region_filter.py measures it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np

METADATA_KEY = "region_filter"  # the ONNX metadata_props / checkpoint meta key: the settings as JSON
STATS = ("peak", "mean", "p90")
SCOPES = ("region", "image")


@dataclass(frozen=True)
class RegionFilter:
    """The filter's settings (module doc); `support` None is the predictor's threshold. The default
    keeps every region."""
    level: float = 0.0
    stat: str = "peak"
    min_share: float = 0.0
    support: float | None = None
    scope: str = "region"

    def __post_init__(self):
        for name, choices in (("stat", STATS), ("scope", SCOPES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"region filter {name} {getattr(self, name)!r}: choose one of {', '.join(choices)}")
        for name in ("level", "min_share", "support"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"region filter {name}={value}: give a number between 0 and 1")

    @classmethod
    def from_metadata(cls, props: dict, source: str = "the model file") -> "RegionFilter":
        """The settings stored under METADATA_KEY (a JSON object, or absent: off)."""
        text = props.get(METADATA_KEY)
        if not text:
            return cls()
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as e:  # bad JSON, unknown keys or values out of range
            raise ValueError(f"{source}: unreadable {METADATA_KEY} metadata {text!r} ({e}); write it with "
                             "RegionFilter(...).metadata()") from None

    def metadata(self) -> dict[str, str]:
        """{METADATA_KEY: the settings as JSON}, for ONNX metadata_props."""
        return {METADATA_KEY: json.dumps(asdict(self), sort_keys=True)}

    @property
    def active(self) -> bool:
        return self.level > 0 or self.min_share > 0

    def __call__(self, prob: np.ndarray, threshold: float) -> np.ndarray:
        return filter_regions(prob, threshold, self)


def region_scores(prob: np.ndarray, support: float, stat: str = "peak") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regions of `prob` (h, w): (labels (h, w) int32, 0 = none and 1..n the regions, area (n,)
    in pixels, score (n,) by `stat`)."""
    mask = (prob >= support).astype(np.uint8)
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = boxes[1:, cv2.CC_STAT_AREA].astype(np.int64)
    if stat == "mean":
        sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count)[1:]
        return labels, areas, sums / np.maximum(areas, 1)
    scores = np.zeros(count - 1)
    for i, (x, y, w, h) in enumerate(boxes[1:, :4], 1):  # each region within its box: few regions, small boxes
        values = prob[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i]
        scores[i - 1] = values.max() if stat == "peak" else np.percentile(values, 90)
    return labels, areas, scores


def kept(areas: np.ndarray, scores: np.ndarray, pixels: int, settings: RegionFilter) -> np.ndarray:
    """(n,) bool: which regions (`region_scores`' areas and scores, of a picture of `pixels`) are kept."""
    passed = (scores >= settings.level) & (areas >= settings.min_share * pixels)
    return passed if settings.scope == "region" else np.full(len(passed), passed.any())


def filter_regions(prob: np.ndarray, threshold: float, settings: RegionFilter) -> np.ndarray:
    """(h, w) float probability -> a float32 copy with the regions that fail `settings` set to 0
    (`prob` itself, as float32, when the filter is off or drops nothing)."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"filter_regions takes one (h, w) probability, got shape {prob.shape}")
    if not settings.active:
        return prob
    support = threshold if settings.support is None else settings.support
    labels, areas, scores = region_scores(prob, support, settings.stat)
    keep = kept(areas, scores, prob.size, settings)
    if keep.all():
        return prob
    dropped = np.concatenate([[False], ~keep])[labels]
    return np.where(dropped, np.float32(0), prob)
