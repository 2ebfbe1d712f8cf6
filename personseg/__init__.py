"""personseg: find the people in images and video, pixel by pixel.

    import personseg
    seg = personseg.load()            # the default shipped model
    alpha = seg.predict(rgb)          # HxWx3 uint8 RGB -> HxW float32 in [0, 1]
"""
from personseg.models import create_model, list_models
from personseg.predict import Predictor, load

__version__ = "0.1.0"
__all__ = ["Predictor", "create_model", "list_models", "load", "__version__"]
