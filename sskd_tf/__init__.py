"""sskd_tf: a TensorFlow 2 / Keras port of "Self-supervised Knowledge Distillation
Using Singular Value Decomposition" (Lee, Kim, Song, ECCV 2018).

The library: `sskd_tf.Distiller` (distil any functional or sequential Keras model)
and `sskd_tf.losses` (every method as a `keras.distillation.DistillationLoss`); see
the README's "Distil your own model". Importing the package alone does not import
TensorFlow (the command line's `--help` stays fast); both load on first use.
"""
import importlib

__all__ = ["Distiller", "losses"]


def __getattr__(attribute):
    if attribute == "Distiller":
        return importlib.import_module("sskd_tf.training.distiller").Distiller
    if attribute == "losses":
        return importlib.import_module("sskd_tf.losses")
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
