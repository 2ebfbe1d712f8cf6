"""Inference on numpy images. The CLI, video and demo code are thin callers of `Predictor`.

Runs on ONNX Runtime, numpy and OpenCV: the shipped models are ONNX files in the package
(`personseg/weights/NAME.onnx`, written by `scripts/ship_onnx.py` from `NAME.pt`), and torch is not
imported. A `.pt` checkpoint (training output) runs through torch, imported only then; without torch
installed that says which extra to install.

Preprocessing keeps the aspect ratio by resizing, not letterboxing: each image is scaled so its area
matches the model's pixel budget (`input_size`, 320x180 = 57,600 pixels by default) with its own
aspect ratio; the model pads to its stride internally and crops back. A 600x800 portrait runs at
208x277, a 1920x1080 frame at 320x180. The low-resolution probability is brought back to the source
size by the guided filter (image as guide, sharp edges) or, with `refine=False`, bilinearly.
"""
from __future__ import annotations

import hashlib
import math
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

from personseg.cli import TRAIN_EXTRA, MissingExtraError

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "accurate"
# ImageNet statistics, of 0-1 RGB (as personseg.checkpoint, which needs torch to import)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("auto", "onnx", "torch")


def import_torch(what: str = ".pt checkpoints"):
    """torch, or a one-line MissingExtraError naming the extra that brings it."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError(f"{what} need torch, which the light install leaves out: {TRAIN_EXTRA} "
                                "(or use a shipped model or an ONNX file)") from None
    return torch


def resolve_device(device):
    """A torch.device for the torch backend: "auto" is cuda when available."""
    torch = import_torch()
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


def preprocess(images: list[np.ndarray], size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Same-size HxWx3 uint8 RGB images -> (N, 3, h, w) float32 C-contiguous model input: resized to
    `size` = (h, w) with INTER_AREA, then (x - mean) / std with mean and std in 0-255 units."""
    h, w = size
    batch = np.stack([cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA) for rgb in images])
    scale = (1 / np.asarray(std, np.float32)).astype(np.float32)
    x = (batch.astype(np.float32) - np.asarray(mean, np.float32)) * scale
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic without overflow warnings (tanh form)."""
    return np.tanh(x * np.float32(0.5)) * np.float32(0.5) + np.float32(0.5)


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


class TorchRunner:
    """A torch model behind the numpy interface of `OnnxModel`: (B, 3, h, w) float32 array -> logits
    array, or `(x, state) -> (logits, state)` for recurrent models (state as torch tensors)."""

    def __init__(self, model, device):
        self.torch = import_torch()
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device, memory_format=self.torch.channels_last)

    def __call__(self, x: np.ndarray, state=None):
        torch = self.torch
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if hasattr(self.model, "state_shapes"):  # recurrent: explicit state in and out
                logits, state = self.model(t, state)
                return logits.float().cpu().numpy(), state
            return self.model(t).float().cpu().numpy()


def _is_torch_module(model) -> bool:
    torch = sys.modules.get("torch")  # a torch module implies torch is imported already
    return torch is not None and isinstance(model, torch.nn.Module)


class Predictor:
    """`predict(rgb)` -> person alpha. rgb is HxWx3 uint8 RGB; the alpha is HxW float32 in [0, 1].

    `model`: an `OnnxModel` (ONNX Runtime; what shipped models and .onnx files use) or a torch
    `nn.Module` (a .pt checkpoint; `device` then says where it runs). `self.model` is that object;
    `self.run` the numpy callable in front of it.
    `tta`: also run the model on the mirror image and average the two probabilities (before the
    upsampling): twice the model's time for a steadier mask (the card of each model says how much).
    `keep`: "all" people found, or only the "largest" connected person region (`keep_largest`), for
    one-person cut-outs of photos with bystanders."""

    def __init__(self, model, *, input_size: tuple[int, int] = (320, 180),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold: float = 0.5, refine: bool = True,
                 device: str | None = "cpu", info: dict | None = None, tta: bool = False,
                 keep: str = "all"):
        if keep not in KEEP:
            raise ValueError(f"keep={keep!r}: choose one of {', '.join(KEEP)}")
        if _is_torch_module(model):
            self.run = TorchRunner(model, device)
            self.device = self.run.device
            model = self.run.model
        else:  # personseg.onnx_backend.OnnxModel, or any numpy callable
            self.run, self.device = model, "cpu"
        self.model = model
        self.input_size = tuple(input_size)
        self.mean = np.asarray(mean, np.float32) * 255
        self.std = np.asarray(std, np.float32) * 255
        self.threshold = float(threshold)
        self.refine, self.tta, self.keep = refine, tta, keep
        self.info = info or {}

    @property
    def backend(self) -> str:
        return "torch" if isinstance(self.run, TorchRunner) else "onnx"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="cpu", refine: bool = True,
                        tta: bool | None = None, keep: str = "all") -> "Predictor":
        """A .pt checkpoint on torch. `tta` None: as the checkpoint says (meta["tta"])."""
        import_torch()
        from personseg.checkpoint import load_checkpoint

        model, info = load_checkpoint(path)
        tta = bool(info.get("meta", {}).get("tta", False)) if tta is None else tta
        return cls(model, input_size=info["input_size"], mean=info["mean"], std=info["std"],
                   threshold=info["threshold"], refine=refine, device=device, info=info, tta=tta, keep=keep)

    @classmethod
    def from_onnx(cls, path: str | Path, device="cpu", refine: bool = True, threads: int | None = None,
                  tta: bool | None = None, keep: str = "all", spinning: bool = True) -> "Predictor":
        """The predictor on an ONNX Runtime session of a `personseg export` file (fp32 or int8);
        `tta` None: as the file says. `threads`: ORT intra-op threads (default
        `onnx_backend.default_threads()`); `spinning` False when other busy threads share the CPU."""
        from personseg.onnx_backend import OnnxModel

        model = OnnxModel(path, device=device, threads=threads, spinning=spinning)
        info = model.info
        return cls(model, input_size=info["input_size"], mean=info["mean"], std=info["std"],
                   threshold=info["threshold"], refine=refine, info=info,
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
        x = preprocess(images, size, self.mean, self.std)
        if self.tta:
            x = np.concatenate([x, x[..., ::-1]])
        prob = sigmoid(np.asarray(self.run(x), np.float32)[:, 0])
        if self.tta:
            plain, mirrored = np.split(prob, 2)
            prob = (plain + mirrored[..., ::-1]) * np.float32(0.5)
        return prob

    def upsample(self, rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """A low-resolution probability (h, w) back to the size of `rgb`: guided filter or bilinear."""
        h, w = rgb.shape[:2]
        if prob.shape == (h, w):
            return np.ascontiguousarray(prob)
        if self.refine:
            from personseg.guided_filter import refine_alpha
            return refine_alpha(rgb, prob)
        return np.clip(cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)


def shipped_models() -> list[str]:
    """Names of the models in the package (an .onnx or a .pt in personseg/weights)."""
    return sorted({p.stem for p in WEIGHTS_DIR.glob("*.onnx")} | {p.stem for p in WEIGHTS_DIR.glob("*.pt")})


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_shipped(name: str, device, refine, tta, keep, backend: str, threads, spinning) -> Predictor:
    onnx_file, pt_file = WEIGHTS_DIR / f"{name}.onnx", WEIGHTS_DIR / f"{name}.pt"
    if backend == "torch" or (backend == "auto" and not onnx_file.exists()):
        if not pt_file.exists():
            raise FileNotFoundError(f"shipped model {name!r} has no .pt checkpoint in {WEIGHTS_DIR}")
        return Predictor.from_checkpoint(pt_file, device, refine, tta, keep)
    predictor = Predictor.from_onnx(onnx_file, device, refine, threads=threads, tta=tta, keep=keep,
                                    spinning=spinning)
    made_from = predictor.info.get("source_sha256")
    if pt_file.exists() and made_from and made_from != file_sha256(pt_file):
        # NAME.pt was re-shipped after NAME.onnx was made: the checkpoint is the newer model
        stale = (f"{onnx_file.name} was made from another {pt_file.name} than the one beside it; "
                 f"rebuild it: python scripts/ship_onnx.py {name}")
        try:
            import_torch()
        except MissingExtraError:
            warnings.warn(f"{stale} (running the older ONNX file)", stacklevel=3)
            return predictor
        warnings.warn(f"{stale} (running {pt_file.name} on torch meanwhile)", stacklevel=3)
        return Predictor.from_checkpoint(pt_file, device, refine, tta, keep)
    return predictor


def load(path_or_name: str | Path | None = None, device: str | None = "cpu", refine: bool = True,
         tta: bool | None = None, keep: str = "all", backend: str = "auto", threads: int | None = None,
         spinning: bool = True) -> Predictor:
    """A predictor from a shipped model's name ("accurate", "fast"; None = the default), an ONNX file
    from `personseg export`, or a .pt checkpoint (needs torch: the `train` extra).

    Shipped models run their ONNX file on ONNX Runtime; `backend="torch"` takes their .pt instead
    (fine-tuning, export). `tta` (mirror-image averaging, see `Predictor`) None: the model's own
    setting. `keep`: "all" people, or the "largest" person region only. `threads` and `spinning`:
    ONNX Runtime's intra-op threads (default: the usable cores, at most 4) and whether they spin-wait."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    name = str(path_or_name or DEFAULT_MODEL)
    shipped = shipped_models()
    if path_or_name is None or (not Path(name).exists() and name in shipped):
        return _load_shipped(name, device, refine, tta, keep, backend, threads, spinning)
    if name.lower().endswith(".onnx"):
        return Predictor.from_onnx(name, device, refine, threads=threads, tta=tta, keep=keep, spinning=spinning)
    if not Path(name).exists() and not name.lower().endswith((".pt", ".pth")) and "/" not in name:
        raise FileNotFoundError(f"no shipped model named {name!r} (shipped: {', '.join(shipped) or 'none'}); "
                                "pass a checkpoint or ONNX path with --model")
    return Predictor.from_checkpoint(name, device, refine, tta, keep)
