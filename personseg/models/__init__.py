"""The model zoo: every module of this package is imported here, so its `@register_model` factories are
in the registry (a new architecture is one new file; see docs/ARCHITECTURE.md)."""
import importlib
import pkgutil

from personseg.models.registry import create_model, is_recurrent, list_models, register_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["create_model", "is_recurrent", "list_models", "register_model"]
