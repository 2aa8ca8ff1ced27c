"""Distillation methods, one module each; importing the package registers them all.

`METHODS` maps a method name to its class; `build_method(name, **hparams)` makes one.
"""
import importlib
import pkgutil

from sskd_tf.distill.base import METHODS, DistillationMethod, build_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "DistillationMethod", "build_method"]
