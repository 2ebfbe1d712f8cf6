"""Inference on numpy images. The CLI, video and demo code are thin callers of `Predictor`.

Preprocessing keeps the aspect ratio by resizing, not letterboxing: each image is scaled so its area
matches the model's pixel budget (`input_size`, 320x180 = 57,600 pixels by default) with its own
aspect ratio; the model pads to its stride internally and crops back. A 600x800 portrait runs at
208x277, a 1920x1080 frame at 320x180. The low-resolution probability is brought back to the source
size by the guided filter (image as guide, sharp edges) or, with `refine=False`, bilinearly.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from personseg.checkpoint import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "accurate"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return device


def model_size(height: int, width: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) with the area of `input_size` (width, height) and the aspect ratio of the image."""
    scale = math.sqrt(input_size[0] * input_size[1] / (height * width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess(images: list[np.ndarray], size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Same-size HxWx3 uint8 RGB images -> (N, 3, h, w) float32 model input (channels_last memory):
    resized to `size` = (h, w) with INTER_AREA, then (x - mean) / std with mean and std in 0-255 units."""
    h, w = size
    batch = np.stack([cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA) for rgb in images])
    batch = (batch.astype(np.float32) - mean) / std
    return torch.from_numpy(batch).permute(0, 3, 1, 2)  # an NHWC buffer is (N, 3, h, w) channels_last


KEEP = ("all", "largest")


def keep_largest(alpha: np.ndarray, threshold: float) -> np.ndarray:
    """The alpha with everything away from its largest connected person region (alpha >= threshold)
    set to 0; the region's soft edge, a band of 1% of the image's longer side, is kept."""
    mask = (alpha >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:  # background and at most one region
        return alpha
    largest = (labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.uint8)
    r = max(2, round(0.01 * max(alpha.shape)))
    near = cv2.dilate(largest, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return np.where(near > 0, alpha, 0).astype(alpha.dtype)


class Predictor:
    """`predict(rgb)` -> person alpha. rgb is HxWx3 uint8 RGB; the alpha is HxW float32 in [0, 1].

    `tta`: also run the model on the mirror image and average the two probabilities (before the
    upsampling): twice the model's time for a steadier mask (the card of `accurate` says how much).
    `keep`: "all" people found, or only the "largest" connected person region (`keep_largest`), for
    one-person cut-outs of photos with bystanders."""

    def __init__(self, model: nn.Module, *, input_size: tuple[int, int] = (320, 180),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold: float = 0.5, refine: bool = True,
                 device: str | torch.device | None = "cpu", info: dict | None = None, tta: bool = False,
                 keep: str = "all"):
        if keep not in KEEP:
            raise ValueError(f"keep={keep!r}: choose one of {', '.join(KEEP)}")
        self.device = resolve_device(device)
        if isinstance(model, nn.Module):  # else a callable such as personseg.onnx_backend.OnnxModel
            model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.model = model
        self.input_size = tuple(input_size)
        self.mean = np.asarray(mean, np.float32) * 255
        self.std = np.asarray(std, np.float32) * 255
        self.threshold = float(threshold)
        self.refine, self.tta, self.keep = refine, tta, keep
        self.info = info or {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="cpu", refine: bool = True,
                        tta: bool | None = None, keep: str = "all") -> "Predictor":
        """`tta` None: as the checkpoint says (meta["tta"], set when a model is shipped with it)."""
        model, info = load_checkpoint(path)
        tta = bool(info.get("meta", {}).get("tta", False)) if tta is None else tta
        return cls(model, input_size=info["input_size"], mean=info["mean"], std=info["std"],
                   threshold=info["threshold"], refine=refine, device=device, info=info, tta=tta, keep=keep)

    @classmethod
    def from_onnx(cls, path: str | Path, device="cpu", refine: bool = True, threads: int | None = None,
                  tta: bool | None = None, keep: str = "all") -> "Predictor":
        """The same predictor on an ONNX Runtime session of a `personseg export` file (fp32 or int8);
        `tta` None: as the file says (the checkpoint's setting when it was exported)."""
        from personseg.onnx_backend import OnnxModel

        model = OnnxModel(path, device=device, threads=threads)
        info = model.info
        return cls(model, input_size=info["input_size"], mean=info["mean"], std=info["std"],
                   threshold=info["threshold"], refine=refine, device="cpu", info=info,
                   tta=info["tta"] if tta is None else tta, keep=keep)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return self.predict_batch([rgb])[0]

    def predict_mask(self, rgb: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """HxW uint8 mask, 0 or 255."""
        t = self.threshold if threshold is None else threshold
        return np.where(self.predict(rgb) >= t, 255, 0).astype(np.uint8)

    def predict_batch(self, images: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Alphas for a list of images; images of the same size run together in batches."""
        for i, rgb in enumerate(images):
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"image {i}: expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
        results: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(images):
            by_size.setdefault(rgb.shape[:2], []).append(i)
        for (h, w), indices in by_size.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                probs = self._forward([images[i] for i in chunk], model_size(h, w, self.input_size))
                for i, prob in zip(chunk, probs):
                    alpha = self.upsample(images[i], prob)
                    results[i] = keep_largest(alpha, self.threshold) if self.keep == "largest" else alpha
        return results

    def _forward(self, images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        """Low-resolution probabilities, (N, h, w) float32."""
        x = preprocess(images, size, self.mean, self.std).to(self.device)
        if self.tta:
            x = torch.cat([x, x.flip(-1)])
        with torch.inference_mode():
            prob = torch.sigmoid(self.model(x)[:, 0].float())
        if self.tta:
            plain, mirrored = prob.chunk(2)
            prob = (plain + mirrored.flip(-1)) / 2
        return prob.cpu().numpy()

    def upsample(self, rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """A low-resolution probability (h, w) back to the size of `rgb`: guided filter or bilinear."""
        h, w = rgb.shape[:2]
        if prob.shape == (h, w):
            return prob
        if self.refine:
            from personseg.guided_filter import refine_alpha
            return refine_alpha(rgb, prob)
        return np.clip(cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)


def load(path_or_name: str | Path | None = None, device: str | None = "cpu", refine: bool = True,
         tta: bool | None = None, keep: str = "all") -> Predictor:
    """A predictor from a checkpoint path, an ONNX file from `personseg export` (run by ONNX Runtime),
    or a shipped model by name ("accurate", "fast"; None = the default). `tta` (mirror-image averaging,
    see `Predictor`) None: the file's own setting (on for `accurate` and ONNX files exported from it).
    `keep`: "all" people, or the "largest" person region only (see `Predictor`)."""
    name = str(path_or_name or DEFAULT_MODEL)
    shipped = WEIGHTS_DIR / f"{name}.pt"
    if path_or_name is None or (not Path(name).exists() and shipped.exists()):
        if not shipped.exists():
            available = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")) or ["none"]
            raise FileNotFoundError(f"no shipped model named {name!r} (shipped: {', '.join(available)}); "
                                    "pass a checkpoint path with --model")
        return Predictor.from_checkpoint(shipped, device, refine, tta, keep)
    if name.lower().endswith(".onnx"):
        return Predictor.from_onnx(name, device, refine, tta=tta, keep=keep)
    return Predictor.from_checkpoint(name, device, refine, tta, keep)
