"""Names of the distillation methods, read from their modules without importing
TensorFlow (`catalog.py`), for the command line's flags; a test checks them
against the registry."""
from sskd_tf.distill.catalog import catalog

METHOD_NAMES = catalog().method_names
