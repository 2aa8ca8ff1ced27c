"""Names of the datasets and recipes, free of TensorFlow so that flags/data.py can use them.

`sskd_tf.data` registers one loader per name of `DATASET_NAMES` and one factory per kind of
`DATASET_KINDS`; tests check they agree (tests/test_names.py).
"""
DATASET_NAMES = ("cifar100", "cifar10", "digits")
DEFAULT_DATASET = "cifar100"
# Kinds of dataset named "<kind>:<argument>" (data/external.py registers them).
DATASET_KINDS = ("tfds", "folder")


def is_dataset_name(name):
    """A registered name, or "<kind>:<argument>" with a known kind and an argument."""
    kind, separator, argument = name.partition(":")
    return name in DATASET_NAMES or (bool(separator) and kind in DATASET_KINDS and bool(argument))

RECIPES = ("kd_methods", "eccv2018", "crd2020")
DEFAULT_RECIPE = "kd_methods"
