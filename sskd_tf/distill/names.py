"""Names of the distillation methods, read from their modules without importing
TensorFlow (`catalog.py`), for the command line's flags and the run's defaults; a test
checks them against the registry.

DEFAULT_METHOD: the method that declares `role = "default"` (main.py's --method).
BASELINE: the one that declares `role = "baseline"`: it trains a network on its labels
alone (a run's teacher, compare's student row).
"""
from sskd_tf.distill.catalog import catalog

METHOD_NAMES = catalog().method_names
DEFAULT_METHOD = catalog().with_role("default")
BASELINE = catalog().with_role("baseline")
