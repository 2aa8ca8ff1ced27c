"""Names of the datasets and recipes, free of TensorFlow so that flags/data.py can use them.

`sskd_tf.data` registers one loader per name of `DATASET_NAMES`; a test checks the two agree.
"""
DATASET_NAMES = ("cifar100", "cifar10", "digits")
DEFAULT_DATASET = "cifar100"

RECIPES = ("kd_methods", "eccv2018")
DEFAULT_RECIPE = "kd_methods"
