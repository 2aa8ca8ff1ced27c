"""CIFAR-100 and CIFAR-10 (Krizhevsky, 2009), from a prepared TFDS copy or the python archive.

Where the data is looked for, first hit wins:

* with `data_dir`: the python copy in `data_dir` (the extracted `cifar-100-python/` or
  `cifar-10-batches-py/` folder, then the `cifar-100-python.tar.gz` / `cifar-10-python.tar.gz`
  archive; `data_dir` may also be that folder or that archive itself), then a TFDS copy prepared
  under `data_dir` used as the TFDS data dir (`<data_dir>/cifar100/3.0.2/...`). Nothing outside
  `data_dir` is looked at: an explicit path never silently falls back to other data.
* without: a TFDS copy prepared in TFDS's default data dir (`$TFDS_DATA_DIR`, else
  `~/tensorflow_datasets`), then the python copy in the Keras cache (`$KERAS_HOME`, else
  `~/.keras`, under `datasets/` or `datasets/<folder>-target/`), where
  `keras.datasets.cifar100.load_data`, which the authors' `dataloader.py`
  (KD_methods_with_TF) calls, leaves it.

Nothing is ever downloaded: TFDS is only asked whether its copy is prepared
(`builder.is_prepared()`), never to `download_and_prepare`, so an offline run fails at once
with one line naming `--data_dir` and `--dataset=digits` instead of hanging on the network.
TFDS shuffles examples when it prepares a dataset, so its order differs from the archive's;
both orders are fixed, but `take_train` picks different images from the two sources.

The python archive holds pickled dicts; they are read with an unpickler that only builds numpy
arrays, so a file planted in `--data_dir` cannot run code.
"""
import dataclasses
import functools
import os
import pickle
import tarfile
from typing import Tuple

import numpy as np

from sskd_tf.data.catalog import DATASETS, IMAGE_SHAPE, DatasetInfo, DatasetSource
from sskd_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class PythonArchiveLayout:
    """Where a CIFAR python archive keeps its pickled batches, and their label key."""

    archive: str
    folder: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    label_key: bytes


LAYOUTS = {
    "cifar100": PythonArchiveLayout(
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), label_key=b"fine_labels"),
    "cifar10": PythonArchiveLayout(
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        label_key=b"labels"),
}

_ARRAY_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def decode_batch(file, label_key):
    """One pickled CIFAR batch as (uint8 [N, 32, 32, 3] RGB images, int64 [N] labels).

    Each row of `b'data'` holds the 1024 red, then green, then blue values of a 32x32 image.
    """
    batch = _ArrayUnpickler(file, encoding="bytes").load()
    rows = np.asarray(batch[b"data"], dtype=np.uint8)
    images = rows.reshape(-1, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2]).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[label_key], dtype=np.int64)


def _concatenate(batches):
    images, labels = zip(*batches)
    return np.concatenate(images), np.concatenate(labels)


def _read_folder(folder, layout):
    def read(files):
        batches = []
        for file_name in files:
            with open(os.path.join(folder, file_name), "rb") as file:
                batches.append(decode_batch(file, layout.label_key))
        return _concatenate(batches)

    return (*read(layout.train_files), *read(layout.test_files))


def _read_archive(archive_path, layout):
    with tarfile.open(archive_path, "r:gz") as archive:
        def read(files):
            return _concatenate(
                decode_batch(archive.extractfile(f"{layout.folder}/{file_name}"), layout.label_key)
                for file_name in files)

        return (*read(layout.train_files), *read(layout.test_files))


def _has_batches(folder, layout):
    return all(os.path.isfile(os.path.join(folder, file_name))
               for file_name in layout.train_files + layout.test_files)


def find_python_copy(path, layout):
    """Reads the python copy at or directly under `path`; None when there is none."""
    if os.path.isfile(path):
        return _read_archive(path, layout) if path.endswith(".tar.gz") else None
    for folder in (os.path.join(path, layout.folder), path):
        if _has_batches(folder, layout):
            return _read_folder(folder, layout)
    archive_path = os.path.join(path, layout.archive)
    if os.path.isfile(archive_path):
        return _read_archive(archive_path, layout)
    return None


def find_tfds_copy(name, data_dir):
    """Reads the TFDS copy prepared under `data_dir` (None: TFDS's default); None if unprepared."""
    if data_dir is not None and not os.path.isdir(os.path.join(data_dir, name)):
        return None
    import tensorflow_datasets as tfds  # imported on use: it is slow and pulls in TensorFlow

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        return None
    arrays = []
    for split in ("train", "test"):
        images, labels = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        arrays += [images, labels]
    return tuple(arrays)


def keras_cache_dirs(layout):
    """Where `keras.datasets` leaves the python copy it downloads."""
    datasets_dir = os.path.join(
        os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))), "datasets")
    return [datasets_dir, os.path.join(datasets_dir, f"{layout.folder}-target")]


def load_cifar(name, data_dir):
    """The four arrays of `name`, found as the module docstring says, or a one-line UserError."""
    layout = LAYOUTS[name]
    if data_dir is not None:
        finders = [functools.partial(find_python_copy, data_dir, layout),
                   functools.partial(find_tfds_copy, name, data_dir)]
        searched = f"--data_dir={data_dir}"
    else:
        finders = [functools.partial(find_tfds_copy, name, None)]
        finders += [functools.partial(find_python_copy, cache_dir, layout)
                    for cache_dir in keras_cache_dirs(layout)]
        searched = "the default TFDS data dir or the Keras cache"
    arrays = next((found for found in (find() for find in finders) if found is not None), None)
    if arrays is None:
        raise UserError(
            f"{name} data not found in {searched} and it cannot be downloaded here (no network): "
            f"pass --data_dir=DIR holding {layout.archive}, its extracted {layout.folder}/ or a "
            f"TFDS data dir with {name} prepared, or use --dataset=digits (bundled with the repo)")
    return arrays


DATASETS.register("cifar100", DatasetSource(
    info=DatasetInfo("cifar100", num_classes=100, image_shape=IMAGE_SHAPE,
                     num_train=50_000, num_test=10_000),
    load=functools.partial(load_cifar, "cifar100")))
DATASETS.register("cifar10", DatasetSource(
    info=DatasetInfo("cifar10", num_classes=10, image_shape=IMAGE_SHAPE,
                     num_train=50_000, num_test=10_000),
    load=functools.partial(load_cifar, "cifar10")))
