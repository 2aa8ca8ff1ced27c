"""Datasets (cifar100, cifar10, digits, tfds:<name>, folder:<dir>) and their tf.data
input pipelines.

`get_dataset_info(name)`, `load_arrays(name, data_dir)`, `load_run_data(name, ...)` (a run's
data, streamed from any step) and `build_datasets(name, ...)` are the entry points; `RECIPES` names the preprocessing recipes `build_datasets` accepts.

Importing this package registers every dataset but does not import TensorFlow, so that
flags/data.py can take the names from here; `build_datasets` and the recipes load TensorFlow
on first use.

A dataset is one module of this package that registers itself (`DATASETS.register(...)`
or, for a kind of dataset, `DATASET_KINDS.register(...)`, at its top level): the package
imports every such module (`catalog.source_modules`), and the name lists follow the
registries.
"""
import importlib

from sskd_tf.data.catalog import (DATASET_KINDS, DATASETS, DatasetInfo, get_dataset_info,
                                  load_arrays, source_modules, source_of)

for _module in source_modules(__path__):
    importlib.import_module(f"{__name__}.{_module}")

from sskd_tf.data.names import DATASET_NAMES, DEFAULT_DATASET, DEFAULT_RECIPE, RECIPES  # noqa: E402

_LOADED_ON_USE = {"build_datasets": "sskd_tf.data.pipeline",
                  "load_run_data": "sskd_tf.data.pipeline"}


def __getattr__(name):
    if name in _LOADED_ON_USE:
        return getattr(importlib.import_module(_LOADED_ON_USE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASET_KINDS", "DATASETS", "source_of", "DATASET_NAMES", "DEFAULT_DATASET", "DEFAULT_RECIPE", "RECIPES",
           "DatasetInfo", "build_datasets", "get_dataset_info", "load_arrays", "load_run_data"]
