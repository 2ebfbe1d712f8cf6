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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from personseg.extras import TRAIN_EXTRA, MissingExtraError
from personseg.guided_filter import area_downsample
from personseg.refiner import refine_mode
from personseg.regions import METADATA_KEY as REGIONS_KEY, RegionFilter

PRESENCE_KEY = "presence_threshold"  # ONNX metadata_props / checkpoint meta: the PresenceHead's cut (0: off)

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "accurate"
# ImageNet statistics, of 0-1 RGB (as personseg.checkpoint, which needs torch to import)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("auto", "onnx", "torch")
DEVICES = ("auto", "cpu", "cuda")


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


def downsample(images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Same-size HxWx3 uint8 RGB images -> (N, h, w, 3) float32 in [0, 1] at `size` = (h, w). Shrinking
    takes each pixel's box mean (`guided_filter.area_downsample`, torch's area interpolation), which is
    also the guided filter's low-resolution guide: the predictor downsamples a photo once for both.
    Enlarging (photos under the pixel budget) is bilinear."""
    h, w = size
    if h <= images[0].shape[0] and w <= images[0].shape[1]:
        return np.stack([area_downsample(rgb, h, w) for rgb in images])
    batch = np.stack([cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR) for rgb in images])
    return batch.astype(np.float32) * np.float32(1 / 255)


def normalize(small: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, h, w, 3) float32 in [0, 1] -> (N, 3, h, w) float32 C-contiguous model input (x * 255 - mean) / std,
    mean and std in 0-255 units."""
    std = np.asarray(std, np.float32)
    x = (small - np.asarray(mean, np.float32) / 255) * (255 / std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def preprocess(images: list[np.ndarray], size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Same-size HxWx3 uint8 RGB images -> (N, 3, h, w) float32 model input at `size` = (h, w)
    (`downsample`, then `normalize`)."""
    return normalize(downsample(images, size), mean, std)


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes model input, as the model was trained: resized with its own aspect ratio to
    the area of `size` (width, height), then (x - mean) / std with `mean` and `std` of 0-1 RGB. One
    object for the predictor, the tracker (the crop's pixel budget) and the int8 calibration."""
    size: tuple[int, int] = (320, 180)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_info(cls, info: dict) -> "InputSpec":
        """The spec of a checkpoint's or ONNX file's description (its input_size, mean and std)."""
        return cls(tuple(info["input_size"]), tuple(info["mean"]), tuple(info["std"]))

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the model sees an image of height x width at."""
        return model_size(height, width, self.size)

    def preprocess(self, images: list[np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray:
        """Same-size (H, W, 3) uint8 RGB images -> (N, 3, h, w) float32 model input, at `size` (h, w)
        or, by default, their `model_size`."""
        size = size or self.model_size(*images[0].shape[:2])
        return preprocess(images, size, np.asarray(self.mean, np.float32) * 255, np.asarray(self.std, np.float32) * 255)


@dataclass
class StepState:
    """What `Predictor.step` carries from one video frame to the next: a recurrent model's state
    (arrays on ONNX Runtime, tensors on torch) and the model-input size (h, w) it belongs to."""
    size: tuple[int, int]
    tensors: list


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
        from personseg.models import is_recurrent

        self.torch = import_torch()
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device, memory_format=self.torch.channels_last)
        self.recurrent = is_recurrent(model)

    def __call__(self, x: np.ndarray, state=None):
        torch = self.torch
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.recurrent:  # explicit state in and out
                logits, state = self.model(t, state)
                return logits.float().cpu().numpy(), state
            out = self.model(t)
            if isinstance(out, tuple):  # multi-task: logits, parts, heatmaps
                return tuple(o.float().cpu().numpy() for o in out)
            return out.float().cpu().numpy()


def _is_torch_module(model) -> bool:
    torch = sys.modules.get("torch")  # a torch module implies torch is imported already
    return torch is not None and isinstance(model, torch.nn.Module)


class Predictor:
    """`predict(rgb)` -> person alpha. rgb is HxWx3 uint8 RGB; the alpha is HxW float32 in [0, 1].

    `model`: an `OnnxModel` (ONNX Runtime; what shipped models and .onnx files use) or a torch
    `nn.Module` (a .pt checkpoint; `device` then says where it runs). `self.model` is that object;
    `self.run` the numpy callable in front of it. `spec`: the model's `InputSpec`.
    `tta`: also run the model on the mirror image and average the two probabilities (before the
    upsampling): twice the model's time for a steadier mask (the card of each model says how much).
    `keep`: "all" people found, or only the "largest" connected person region (`keep_largest`), for
    one-person cut-outs of photos with bystanders.
    `regions`: the `personseg.regions.RegionFilter` that drops unconfident person regions of the
    low-resolution probability before upsampling; None: the one the model file carries (off if none).
    Recurrent models (`self.recurrent`) run videos frame by frame with `step`; `predict` sees stills."""

    def __init__(self, model, *, spec: InputSpec = InputSpec(), threshold: float = 0.5, refine: bool = True,
                 device: str | None = "cpu", info: dict | None = None, tta: bool = False, keep: str = "all",
                 regions: RegionFilter | None = None):
        if keep not in KEEP:
            raise ValueError(f"keep={keep!r}: choose one of {', '.join(KEEP)}")
        if _is_torch_module(model):
            self.run = TorchRunner(model, device)
            self.device = self.run.device
            model = self.run.model
        else:  # personseg.onnx_backend.OnnxModel, or any numpy callable
            self.run, self.device = model, "cpu"
        self.model = model
        self.recurrent = bool(getattr(self.run, "recurrent", False))
        self.spec = spec
        self.threshold = float(threshold)
        self.refine, self.tta, self.keep = refine, tta, keep
        self.refiner = None  # a trained refiner.DeepRefiner, attached by load() for shipped models
        self.info = info or {}
        if regions is None:  # an ONNX file's metadata_props, or a checkpoint's meta
            props = self.info if REGIONS_KEY in self.info else self.info.get("meta", {})
            regions = RegionFilter.from_metadata(props, self.info.get("path", "the model file"))
        self.regions = regions
        # a model with a PresenceHead: pictures it gives a lower probability of anyone in them get no mask
        self.presence_threshold = float(self.info.get(PRESENCE_KEY, self.info.get("meta", {}).get(PRESENCE_KEY, 0)))

    @property
    def input_size(self) -> tuple[int, int]:
        """The pixel budget (width, height) of `spec`."""
        return self.spec.size

    @property
    def mean(self) -> np.ndarray:
        """`spec.mean` in 0-255 units, as `preprocess` takes it."""
        return np.asarray(self.spec.mean, np.float32) * 255

    @property
    def std(self) -> np.ndarray:
        """`spec.std` in 0-255 units, as `preprocess` takes it."""
        return np.asarray(self.spec.std, np.float32) * 255

    @property
    def backend(self) -> str:
        return "torch" if isinstance(self.run, TorchRunner) else "onnx"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="cpu", refine: bool = True, tta: bool | None = None,
                        keep: str = "all", threshold: float | None = None) -> "Predictor":
        """A .pt checkpoint on torch. `tta` and `threshold` None: as the checkpoint says."""
        import_torch()
        from personseg.checkpoint import load_checkpoint

        model, info = load_checkpoint(path)
        tta = bool(info.get("meta", {}).get("tta", False)) if tta is None else tta
        return cls(model, spec=InputSpec.from_info(info), threshold=_or(threshold, info["threshold"]),
                   refine=refine, device=device, info=info, tta=tta, keep=keep)

    @classmethod
    def from_onnx(cls, path: str | Path, device="cpu", refine: bool = True, threads: int | None = None,
                  tta: bool | None = None, keep: str = "all", spinning: bool = True,
                  threshold: float | None = None) -> "Predictor":
        """The predictor on an ONNX Runtime session of a `personseg export` file (fp32 or int8);
        `tta` and `threshold` None: as the file says. `threads`: ORT intra-op threads (default
        `onnx_backend.default_threads()`); `spinning` False when other busy threads share the CPU."""
        from personseg.onnx_backend import OnnxModel

        model = OnnxModel(path, device=device, threads=threads, spinning=spinning)
        info = model.info
        return cls(model, spec=InputSpec.from_info(info), threshold=_or(threshold, info["threshold"]),
                   refine=refine, info=info, tta=_or(tta, info["tta"]), keep=keep)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return self.predict_batch([rgb])[0]

    def predict_mask(self, rgb: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """HxW uint8 mask, 0 or 255."""
        t = self.threshold if threshold is None else threshold
        return np.where(self.predict(rgb) >= t, 255, 0).astype(np.uint8)

    def predict_batch(self, images: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Alphas for a list of images; images of the same size run together in batches."""
        _check_images(images)
        results: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(images):
            by_size.setdefault(rgb.shape[:2], []).append(i)
        for (h, w), indices in by_size.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                probs, _, smalls = self._forward([images[i] for i in chunk], self.spec.model_size(h, w))
                for i, prob, small in zip(chunk, probs, smalls):
                    results[i] = self._finish(images[i], prob, small)
        return results

    @property
    def output_names(self) -> tuple[str, ...]:
        """What the model returns, by name: "logits" first, then "parts" and "heatmaps" (a multi-task
        model) or "presence" (a `PresenceHead`)."""
        if isinstance(self.run, TorchRunner):
            return tuple(getattr(self.model, "outputs", ("logits",)))
        return tuple(getattr(self.run, "output_names", ("logits",)))

    @property
    def has_heads(self) -> bool:
        """Whether the model has the part and keypoint heads (multitask_unet_mobilenet_v2, `parts`)."""
        return "heatmaps" in self.output_names and not self.recurrent

    def predict_all(self, rgb: np.ndarray, flip: bool = True, landmarks: bool = True) -> dict:
        """{"alpha": (H, W) float32, "parts": (H, W) uint8 part classes (personseg.parts.PART_NAMES),
        "people": [{"keypoints": (17, 3) x, y, score, "box", "score"}]} for a multi-task model.
        Parts: the part head's best class where the alpha is at least the threshold (the best person
        class there, never background), background elsewhere, so parts and mask agree. People: one
        skeleton per connected person region of the mask, read top-down from a crop of the region at
        the model's tall input size (personseg.keypoints.top_down; one more pass per person), with
        `flip` its mirror image too, the two heatmaps averaged (SimpleBaseline's flip test);
        `landmarks=False` leaves "people" out and skips those passes. `tta` applies to the alpha only."""
        from personseg import keypoints

        if not self.has_heads:
            raise ValueError("predict_all needs a model with part and keypoint heads: the shipped `parts` "
                             "model, or a multitask_unet_mobilenet_v2 checkpoint")
        _check_images([rgb])
        size = self.spec.model_size(*rgb.shape[:2])
        prob, heads, small = self._forward([rgb], size)
        alpha = self._finish(rgb, prob[0], small[0])
        person = alpha >= self.threshold
        crop_size = (max(self.input_size), min(self.input_size))  # (H, W): tall, as the keypoint head trained

        def heatmaps_of(patch: np.ndarray) -> np.ndarray:
            batch = np.stack([patch, patch[:, ::-1]]) if flip else patch[None]
            outputs = self.run(normalize(batch.astype(np.float32) * np.float32(1 / 255), self.mean, self.std))
            heatmaps = sigmoid(np.asarray(outputs[2], np.float32))  # focal-loss logits -> peak probabilities
            return (heatmaps[0] + keypoints.unmirror(heatmaps[1])) / 2 if flip else heatmaps[0]

        result = {"alpha": alpha, "parts": _part_map(np.asarray(heads[0], np.float32)[0], person)}
        if landmarks:
            result["people"] = keypoints.top_down(rgb, person, heatmaps_of, crop_size)
        return result

    def predict_parts(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) uint8 body-part classes (`predict_all`, without the landmark passes)."""
        return self.predict_all(rgb, landmarks=False)["parts"]

    def predict_landmarks(self, rgb: np.ndarray, flip: bool = True) -> list[dict]:
        """One COCO-17 skeleton per person region (`predict_all`)."""
        return self.predict_all(rgb, flip)["people"]

    def step(self, rgb: np.ndarray, state: StepState | None = None) -> tuple[np.ndarray, StepState]:
        """One video frame through a recurrent model: (its alpha, the state for the next frame). `state`
        is what the previous frame's call returned; None (the first frame), or a frame of another size,
        starts from zeros. Preprocessing, `tta`, upsampling and `keep` as in `predict`."""
        if not self.recurrent:
            raise ValueError("step() needs a recurrent model (the recurrent_* architectures); "
                             "run this one on each frame with predict_batch")
        _check_images([rgb])
        size = self.spec.model_size(*rgb.shape[:2])
        tensors = state.tensors if state is not None and state.size == size else None
        probs, tensors, small = self._forward([rgb], size, tensors)
        return self._finish(rgb, probs[0], small[0]), StepState(size, tensors)

    def _forward(self, images: list[np.ndarray], size: tuple[int, int], state=None) -> tuple:
        """Low-resolution probabilities (N, h, w) float32; a recurrent model's new state or a multi-task
        model's other heads (part logits, heatmaps; of the plain images), else None; and the images
        downsampled to `size` ((N, h, w, 3) in [0, 1], the guided filter's guides). With `tta` the
        mirror images run in the same batch (and, recurrent, carry their own state)."""
        small, heads, presence = downsample(images, size), None, None
        x = normalize(small, self.mean, self.std)
        if self.tta:
            x = np.concatenate([x, x[..., ::-1]])
        if self.recurrent:
            logits, state = self.run(x, state)
        else:
            logits = self.run(x)
            if isinstance(logits, tuple):  # the person head, then the others
                named = dict(zip(self.output_names, logits))
                logits, presence = named.pop("logits"), named.pop("presence", None)
                heads = list(named.values()) or None  # a multi-task model's parts, heatmaps
        prob = sigmoid(np.asarray(logits, np.float32)[:, 0])
        if self.tta:
            plain, mirrored = np.split(prob, 2)
            prob = (plain + mirrored[..., ::-1]) * np.float32(0.5)
        if presence is not None and self.presence_threshold > 0:
            present = sigmoid(np.asarray(presence, np.float32)[:, 0])
            present = present.reshape(2, -1).mean(0) if self.tta else present
            prob[present < self.presence_threshold] = 0  # nobody in the picture: no mask at all
        return prob, state if self.recurrent else heads, small

    def _finish(self, rgb: np.ndarray, prob: np.ndarray, small: np.ndarray | None = None) -> np.ndarray:
        """A low-resolution probability -> the alpha of `rgb`: unconfident regions dropped (`regions`),
        upsampled (`small`: `rgb` downsampled to the probability's size, see `downsample`), then `keep`
        applied."""
        alpha = self.upsample(rgb, self.regions(prob, self.threshold), small)
        return keep_largest(alpha, self.threshold) if self.keep == "largest" else alpha

    def upsample(self, rgb: np.ndarray, prob: np.ndarray, small: np.ndarray | None = None) -> np.ndarray:
        """A low-resolution probability (h, w) back to the size of `rgb`: guided filter or bilinear.
        `small`: `rgb` as `downsample` made it for the model, reused as the filter's guide when shrunk."""
        h, w = rgb.shape[:2]
        if prob.shape == (h, w):
            return np.ascontiguousarray(prob)
        mode = refine_mode(self.refine)  # "auto" is the trained refiner when one is attached
        if mode != "none":
            from personseg.guided_filter import refine_alpha
            shrunk = small is not None and prob.shape[0] <= h and prob.shape[1] <= w
            if self.refiner is not None and mode in ("auto", "deep"):
                return self.refiner(rgb, prob, small if shrunk else None)
            return refine_alpha(rgb, prob, guide_lr=small if shrunk else None)
        return np.clip(cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)


def _part_map(part_logits: np.ndarray, person: np.ndarray) -> np.ndarray:
    """(6, h, w) part logits and an (H, W) person mask -> (H, W) uint8 classes: the best of classes 1..5
    inside the mask, 0 outside."""
    h, w = person.shape
    up = cv2.resize(np.ascontiguousarray(part_logits[1:].transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
    best = (np.argmax(up.reshape(h, w, -1), axis=-1) + 1).astype(np.uint8)
    return np.where(person, best, 0).astype(np.uint8)


def _or(value, default):
    return default if value is None else value


def _check_images(images: list[np.ndarray]) -> None:
    for i, rgb in enumerate(images):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")


def shipped_models() -> list[str]:
    """Names of the models in the package (an .onnx or a .pt in personseg/weights; NAME_refiner.onnx is
    a model's trained refiner, `personseg.refiner`, not a model)."""
    files = [*WEIGHTS_DIR.glob("*.onnx"), *WEIGHTS_DIR.glob("*.pt")]
    return sorted({p.stem for p in files if not p.stem.endswith("_refiner")})


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_shipped(name: str, device, refine, tta, keep, threshold, backend: str, threads, spinning) -> Predictor:
    onnx_file, pt_file = WEIGHTS_DIR / f"{name}.onnx", WEIGHTS_DIR / f"{name}.pt"
    if backend == "torch" or (backend == "auto" and not onnx_file.exists()):
        if not pt_file.exists():
            raise FileNotFoundError(f"shipped model {name!r} has no .pt checkpoint in {WEIGHTS_DIR}")
        return Predictor.from_checkpoint(pt_file, device, refine, tta, keep, threshold)
    predictor = Predictor.from_onnx(onnx_file, device, refine, threads=threads, tta=tta, keep=keep,
                                    spinning=spinning, threshold=threshold)
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
        return Predictor.from_checkpoint(pt_file, device, refine, tta, keep, threshold)
    return predictor


def _with_refiner(predictor: Predictor, model_file: Path, refine, threads, spinning) -> Predictor:
    """Attach the trained refiner shipped beside `model_file` for refine "deep" (it needs one), and for
    "auto" when refiner.AUTO says so."""
    from personseg.refiner import AUTO, shipped_refiner

    mode = refine_mode(refine)
    if mode == "deep" or (mode == "auto" and AUTO == "deep"):
        predictor.refiner = shipped_refiner(model_file, threads, spinning)
        if predictor.refiner is None and mode == "deep":
            raise FileNotFoundError(f"refine='deep': no trained refiner {model_file.stem}_refiner.onnx in "
                                    f"{WEIGHTS_DIR}; use refine='guided' or train one with scripts/train_refiner.py")
    return predictor


def load(path_or_name: str | Path | None = None, device: str | None = "cpu", refine: bool | str = True,
         tta: bool | None = None, keep: str = "all", backend: str = "auto", threads: int | None = None,
         spinning: bool = True, threshold: float | None = None,
         regions: bool | RegionFilter | None = None, presence: float | None = None) -> Predictor:
    """A predictor from a shipped model's name ("accurate", "fast"; None = the default), an ONNX file
    from `personseg export`, or a .pt checkpoint (needs torch: the `train` extra).

    Shipped models run their ONNX file on ONNX Runtime; `backend="torch"` takes their .pt instead
    (fine-tuning, export). `tta` (mirror-image averaging, see `Predictor`) None: the model's own
    setting. `keep`: "all" people, or the "largest" person region only (picked at the threshold).
    `refine`: how the low-resolution probability reaches the photo's size: "deep" (the trained guided
    filter shipped beside the model, personseg/weights/NAME_refiner.onnx), "guided" (the analytic one),
    "none" (bilinear); True or "auto": `refiner.AUTO` when the model ships a refiner (guided: see
    MODEL_CARD.md, "Edges"), else guided; False: none.
    `threshold` None: the model's own. `threads` and `spinning`: ONNX Runtime's intra-op threads
    (default: the usable cores, at most 4) and whether they spin-wait. `regions`: None or True, the
    model's own region filter (`personseg.regions`: unconfident person regions dropped); False, none;
    or a `RegionFilter`. `presence`: for a model with a presence head (`accurate`, `parts`), the
    probability of anyone being in the photo under which its mask is emptied; None: the model's own cut,
    0: off."""
    predictor = _load(path_or_name, device, refine, tta, keep, backend, threads, spinning, threshold)
    if regions is not None and regions is not True:
        predictor.regions = regions or RegionFilter()
    if presence is not None:
        predictor.presence_threshold = float(presence)
    return predictor


def _load(path_or_name, device, refine, tta, keep, backend, threads, spinning, threshold) -> Predictor:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    name = str(path_or_name or DEFAULT_MODEL)
    shipped = shipped_models()
    if path_or_name is None or (not Path(name).exists() and name in shipped):
        predictor = _load_shipped(name, device, refine, tta, keep, threshold, backend, threads, spinning)
        return _with_refiner(predictor, WEIGHTS_DIR / f"{name}.onnx", refine, threads, spinning)
    if refine_mode(refine) == "deep":
        raise ValueError(f"refine='deep' needs a shipped model with a trained refiner, not {name}; "
                         "use refine='guided' (or train one: scripts/train_refiner.py)")
    if name.lower().endswith(".onnx"):
        return Predictor.from_onnx(name, device, refine, threads=threads, tta=tta, keep=keep, spinning=spinning,
                                   threshold=threshold)
    if not Path(name).exists() and not name.lower().endswith((".pt", ".pth")) and "/" not in name:
        raise FileNotFoundError(f"no shipped model named {name!r} (shipped: {', '.join(shipped) or 'none'}); "
                                "pass a checkpoint or ONNX path with --model")
    return Predictor.from_checkpoint(name, device, refine, tta, keep, threshold)
