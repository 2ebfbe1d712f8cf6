from personseg.models.registry import create_model, list_models, register_model
from personseg.models import unet_mobilenet, unet, deeplabv3plus  # noqa: F401  (register the architectures)

__all__ = ["create_model", "list_models", "register_model"]
