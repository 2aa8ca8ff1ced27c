"""Modes of main.py. Each mode is a module of this package with `run(flags)`;
modules are imported only when their mode runs, so `--help` stays fast."""
import importlib

from sskd_tf.registry import Registry

MODES = Registry("mode")
for _name in ("train", "teacher", "summary", "compare", "tune", "export"):
    MODES.register(_name, f"sskd_tf.modes.{_name}")


def run(name, flag_values):
    module = importlib.import_module(MODES.get(name))
    module.run(flag_values)
