"""Distillation methods, one module each.

`METHODS` maps a method name to its class; `build_method(name, **hparams)` makes
one. The first use of either imports every module of the package, which
registers its methods. Importing the package alone does not import TensorFlow,
so that flags/distill.py can validate names from `names.METHOD_NAMES`.
"""
import importlib
import pkgutil

_REGISTRY_ATTRIBUTES = ("METHODS", "DistillationMethod", "build_method")


def _load_methods():
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return importlib.import_module(f"{__name__}.base")


def __getattr__(attribute):
    if attribute not in _REGISTRY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    return getattr(_load_methods(), attribute)


__all__ = list(_REGISTRY_ATTRIBUTES)
