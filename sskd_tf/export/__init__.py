"""LiteRT (TFLite) export of a finished run's student: float32, float16 and int8 models,
each measured against the Keras model (see exporter.py for what is written)."""
from sskd_tf.export.exporter import ExportOptions, export_run
from sskd_tf.export.formats import FORMATS, convert

__all__ = ["ExportOptions", "FORMATS", "convert", "export_run"]
