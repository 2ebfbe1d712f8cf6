"""personseg: find the people in images and video, pixel by pixel.

    import personseg
    seg = personseg.load()            # the default shipped model (ONNX Runtime; no torch needed)
    alpha = seg.predict(rgb)          # HxWx3 uint8 RGB -> HxW float32 in [0, 1]
"""
from personseg.predict import Predictor, load

__version__ = "0.1.0"
__all__ = ["Predictor", "create_model", "list_models", "load", "__version__"]


def __getattr__(name: str):
    """`create_model` and `list_models` need torch: imported on first use, so `import personseg` does not."""
    if name in ("create_model", "list_models"):
        from personseg import models

        return getattr(models, name)
    raise AttributeError(f"module 'personseg' has no attribute {name!r}")
