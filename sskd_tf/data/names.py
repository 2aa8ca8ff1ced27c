"""Names of the datasets and recipes, free of TensorFlow so that flags/data.py can use them.

The dataset names and the kinds of dataset ("<kind>:<argument>") are those the dataset
modules register (importing `sskd_tf.data` registers them, without TensorFlow).
"""
from sskd_tf.data.catalog import DATASET_KINDS as _KINDS
from sskd_tf.data.catalog import DATASETS as _DATASETS

DATASET_NAMES = tuple(_DATASETS.names())
DEFAULT_DATASET = "cifar100"
DATASET_KINDS = tuple(_KINDS.names())


def is_dataset_name(name):
    """A registered name, or "<kind>:<argument>" with a known kind and an argument."""
    kind, separator, argument = name.partition(":")
    return name in DATASET_NAMES or (bool(separator) and kind in DATASET_KINDS and bool(argument))

RECIPES = ("kd_methods", "eccv2018", "kd_tf2", "crd2020")
DEFAULT_RECIPE = "kd_methods"
