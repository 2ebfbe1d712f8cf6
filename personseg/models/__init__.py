from personseg.models.registry import create_model, is_recurrent, list_models, register_model
from personseg.models import unet_mobilenet, unet, deeplabv3plus  # noqa: F401  (register the architectures)
from personseg.models import recurrent  # noqa: F401  (recurrent_unet_mobilenet_*)
from personseg.models import hybrid  # noqa: F401  (hybrid_mobilenet_v2)
from personseg.models import multitask  # noqa: F401  (multitask_unet_mobilenet_v2)

__all__ = ["create_model", "is_recurrent", "list_models", "register_model"]
