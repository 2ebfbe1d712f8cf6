"""The trained deep guided filter at inference, on ONNX Runtime, numpy and OpenCV (no torch).

Wu et al., "Fast End-to-End Trainable Guided Filter" (CVPR 2018): a small network corrects the guided
filter's coefficients (A, b) at the model's resolution; they are bilinearly upsampled and applied to the
full-resolution photo exactly as the analytic filter's (`guided_filter.apply_coefficients`), so one
network serves any photo size. The ONNX file (`personseg/weights/NAME_refiner.onnx`, written by
scripts/train_refiner.py on the frozen shipped model NAME) holds only `CoefficientNet`; the analytic
solve before it and the full-resolution step after it are `personseg.guided_filter`'s.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from personseg.guided_filter import apply_coefficients, area_downsample, coefficients, default_radius

REFINE = ("auto", "deep", "guided", "none")
# What "auto" (the default) runs when a model ships a refiner: guided, because the trained refiner measured
# worse IoU on every real validation folder and worse edge-band MSE and gradient error on composites
# (benchmarks/matting.py, MODEL_CARD.md "Edges"); refine="deep" runs it.
AUTO = "guided"
FORMAT = "personseg-refiner"


def refine_mode(refine: bool | str) -> str:
    """`refine` as one of REFINE: True is "auto", False "none" (the old boolean still works)."""
    if refine is True or refine is None:
        return "auto"
    if refine is False:
        return "none"
    if refine not in REFINE:
        raise ValueError(f"refine={refine!r}: choose one of {', '.join(REFINE)}")
    return refine


class DeepRefiner:
    """`refiner(rgb, prob)` -> alpha, as `guided_filter.refine_alpha`, with the trained coefficients."""

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        from personseg.onnx_backend import ModelFileError, import_onnxruntime, session_options

        ort = import_onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, spinning),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own pybind error types
            raise ModelFileError(f"{path}: not a readable ONNX refiner ({str(e).splitlines()[0]}); "
                                 "rebuild it with scripts/train_refiner.py") from e
        self.info = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.info.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a personseg refiner (metadata format {self.info.get('format')!r}); "
                                 "rebuild it with scripts/train_refiner.py")
        self.eps = float(self.info.get("eps", 1e-5))
        self.path = str(path)

    def coefficients(self, rgb: np.ndarray, prob: np.ndarray, guide_lr: np.ndarray | None = None) -> np.ndarray:
        """(4, h, w) float32: the analytic coefficients of `refine_alpha`, corrected by the net.
        `guide_lr`: `rgb` already `area_downsample`d to the size of `prob`."""
        h, w = prob.shape
        guide = area_downsample(np.ascontiguousarray(rgb, dtype=np.uint8), h, w) if guide_lr is None else guide_lr
        coef = coefficients(guide, np.asarray(prob, np.float64), default_radius(h, w), self.eps)
        feeds = {"coef": coef[None].astype(np.float32),
                 "guide": np.ascontiguousarray(np.transpose(guide, (2, 0, 1))[None], dtype=np.float32),
                 "prob": np.asarray(prob, np.float32)[None, None]}
        return self.session.run(["refined"], feeds)[0][0]

    def __call__(self, rgb: np.ndarray, prob: np.ndarray, guide_lr: np.ndarray | None = None) -> np.ndarray:
        """rgb (H, W, 3) uint8, prob (h, w) float in [0, 1] -> (H, W) float32 alpha in [0, 1]."""
        return apply_coefficients(rgb, self.coefficients(rgb, prob, guide_lr))


def shipped_refiner(model_file: str | Path, threads: int | None = None, spinning: bool = True) -> DeepRefiner | None:
    """The refiner beside a shipped model (NAME_refiner.onnx next to NAME.onnx), if there is one and it was
    trained on this very model file (its sha256 in the refiner's metadata); None otherwise, with a warning
    when it was trained on another version of the model."""
    from personseg.predict import file_sha256

    model_file = Path(model_file)
    path = model_file.with_name(f"{model_file.stem}_refiner.onnx")
    if not path.is_file() or not model_file.is_file():
        return None
    refiner = DeepRefiner(path, threads=threads, spinning=spinning)
    if refiner.info.get("model_sha256") not in (None, file_sha256(model_file)):
        warnings.warn(f"{path.name} was trained on another {model_file.name}; using the analytic guided filter "
                      f"(retrain it: python scripts/train_refiner.py --model {model_file.stem})", stacklevel=3)
        return None
    return refiner
