"""The dataset registry: what each dataset is (`DatasetInfo`) and how its arrays are loaded."""
import ast
import dataclasses
import os
import pkgutil
from typing import Any, Callable, Mapping, Optional, Tuple

import numpy as np

from sskd_tf.errors import UserError
from sskd_tf.registry import Registry

IMAGE_SHAPE = (32, 32, 3)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; known without its data on disk.

    run_defaults: training settings (RunConfig fields) a run on this dataset takes
    when the flags leave them unset, before the recipe's; empty for the authors'
    CIFAR schedules.
    """

    name: str
    num_classes: int
    image_shape: Tuple[int, int, int]
    num_train: int
    num_test: int
    run_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A dataset: its info and `load(data_dir, download)` returning the four arrays
    (`download`: whether a missing dataset may be fetched over the network).

    normalization: "cifar" (the recipes' constants, data/recipes.py) or "computed"
    (per-channel statistics of the training split, `pipeline.normalization`).
    """

    info: DatasetInfo
    load: Callable[[Optional[str], bool], tuple]
    normalization: str = "cifar"


DATASETS = Registry("dataset")
# Kinds of dataset named "<kind>:<argument>" (tfds:mnist, folder:images/): each maps the
# argument and the loading options to a DatasetSource (data/external.py).
DATASET_KINDS = Registry("dataset kind")


REGISTERING_CALLS = ("DATASETS.register", "DATASET_KINDS.register")


def source_modules(directories):
    """The modules in `directories` (a package's __path__) that register a dataset or a
    kind of dataset at their top level, read from their source without importing them."""
    found = []
    for module in sorted(pkgutil.iter_modules(directories), key=lambda entry: entry.name):
        path = os.path.join(module.module_finder.path, f"{module.name}.py")
        if module.ispkg or not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        if any(isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
               and ast.unparse(node.value.func) in REGISTERING_CALLS for node in tree.body):
            found.append(module.name)
    return found


def source_of(name, **options):
    """The DatasetSource of a registered name or of "<kind>:<argument>"; `options`
    (data_dir, image_size, download, validation_split, seed) go to the kind's factory."""
    kind, separator, argument = name.partition(":")
    if separator:
        return DATASET_KINDS.get(kind)(argument, **options)
    return DATASETS.get(name)


def get_dataset_info(name, **options):
    """The `DatasetInfo` of a dataset; reads nothing from disk for a registered one
    (a "<kind>:" dataset reads its metadata)."""
    return source_of(name, **options).info


def load_arrays(name, data_dir=None, download=False):
    """Loads a dataset as (train_images, train_labels, test_images, test_labels).

    Images are uint8 [N, 32, 32, 3] (RGB, channels last), labels int64 [N]. Each dataset's
    module says where it looks for data, and, with `download`, where it fetches missing data
    from; a dataset neither found nor fetched raises a one-line UserError (a ValueError).
    """
    return read_arrays(source_of(name), data_dir, download)


def read_arrays(source, data_dir=None, download=False):
    """`load_arrays` of a DatasetSource."""
    arrays = source.load(data_dir, download)
    _check_arrays(source.info, arrays)
    train_images, train_labels, test_images, test_labels = arrays
    return (train_images, train_labels.astype(np.int64), test_images,
            test_labels.astype(np.int64))


def check_finite_images(images, source):
    """Refuse (UserError) images of a floating dtype holding NaN or infinite pixels,
    naming how many and the first one; `source` says where they come from. Integer
    images are always finite. For any loader of user-provided images."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        return
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        raise UserError(f"{source}: {int(bad.sum())} of {len(images)} images hold NaN or infinite "
                        f"pixels (the first: image {int(np.argmax(bad))}); fix or remove them")


def _check_arrays(info, arrays):
    for split, images, labels in (("train", *arrays[:2]), ("test", *arrays[2:])):
        check_finite_images(images, f"{info.name} {split}")
        if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
            raise UserError(f"{info.name} {split} images are {images.dtype} {images.shape}, "
                             f"expected uint8 [N, {', '.join(map(str, info.image_shape))}]")
        if labels.shape != (len(images),):
            raise UserError(f"{info.name} {split} has {len(images)} images but labels of "
                             f"shape {labels.shape}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < info.num_classes:
            raise UserError(f"{info.name} {split} labels fall outside [0, {info.num_classes})")
