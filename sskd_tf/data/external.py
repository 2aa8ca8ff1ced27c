"""Datasets from outside the port, named by kind: `tfds:<name>` (any TFDS image
classification dataset) and `folder:<dir>` (one subfolder of images per class).

Both load into the same uint8 [N, H, W, 3] arrays as the registered datasets
(grey images become RGB). Their inputs are normalised with statistics of their own
training split (`pipeline.normalization`), not CIFAR's constants.

- tfds: the splits, classes and image size come from the TFDS metadata; "train" is the
  training split and "test" (else "validation") the held-out one; a dataset with
  neither is split by `validation_split`. Unless `download=False`, an unprepared
  dataset is downloaded and prepared as TFDS does by default, behind the probe of its
  addresses that CIFAR's download has (data/cifar.py): offline it fails within
  `cifar.PROBE_TIMEOUT_S`, and a failed attempt leaves nothing in the data dir.
  Images of varying size need `image_size`.
- folder: `<dir>/train/<class>/` and `<dir>/test/<class>/` (the same classes) when both
  exist, else `<dir>/<class>/` with `validation_split` of it held out (fixed by `seed`);
  read by `keras.utils.image_dataset_from_directory`, at `image_size` or the size of
  the first image. A file that is not a whole image is named in a UserError.
"""
import os
import re

import numpy as np

from sskd_tf.data import cifar
from sskd_tf.data.catalog import DATASET_KINDS, DatasetInfo, DatasetSource
from sskd_tf.errors import UserError

HELD_OUT_SPLITS = ("test", "validation")


def _stack(dataset):
    """uint8 RGB image array and int64 label array of a (image, label) tf.data.Dataset;
    each batch is converted as it comes, so that no float copy of the whole set is held."""
    images, labels = [], []
    for batch_images, batch_labels in dataset.batch(256).as_numpy_iterator():
        if batch_images.shape[-1] == 1:
            batch_images = np.repeat(batch_images, 3, axis=-1)
        images.append(np.clip(np.rint(batch_images), 0, 255).astype(np.uint8))
        labels.append(batch_labels)
    if not images:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _resized(dataset, image_size):
    import tensorflow as tf

    if image_size is None:
        return dataset
    return dataset.map(lambda image, label: (
        tf.image.resize(image, (image_size, image_size)), label))


def _hold_out(images, labels, fraction, seed):
    """(train, held-out) parts of one split, the held-out one `fraction` of it."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--validation_split must lie in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(labels))
    held = max(1, int(round(fraction * len(labels))))
    test, train = order[:held], order[held:]
    return images[train], labels[train], images[test], labels[test]


# ------------------------------------------------------------------------------ tfds


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # TFDS raises its own DatasetNotFoundError and friends
        raise UserError(f"tfds:{name}: {str(error).splitlines()[0]}") from None


def _tfds_keys(name, builder):
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise UserError(f"tfds:{name} has no (image, label) supervised keys: it is not an "
                        "image classification dataset")
    image_key, label_key = keys
    image, label = builder.info.features[image_key], builder.info.features[label_key]
    if not hasattr(label, "num_classes") or len(getattr(image, "shape", ())) != 3:
        raise UserError(f"tfds:{name}: {image_key!r} / {label_key!r} are not images and class "
                        "labels")
    return image.shape, label.num_classes


def tfds_source(name, data_dir=None, image_size=None, download=True, validation_split=0.2,
                seed=0):
    """A DatasetSource for `tfds:<name>` (see the module docstring)."""
    builder = _tfds_builder(name, data_dir)
    image_shape, num_classes = _tfds_keys(name, builder)
    if None in image_shape[:2] and image_size is None:
        raise UserError(f"tfds:{name} has images of varying size: pass --image_size")
    size = image_size or image_shape[0]
    splits = set(builder.info.splits) or {"train", "test"}

    def load(_data_dir=None, _download=False):
        if not builder.is_prepared():
            if not download:
                raise UserError(f"tfds:{name} is not prepared in {builder.data_dir} and "
                                "downloads are off (--no_download)")
            manual_dir = os.path.join(builder.data_dir_root, "downloads", "manual")
            if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not (os.path.isdir(manual_dir)
                                                             and os.listdir(manual_dir)):
                raise UserError(f"tfds:{name} cannot be downloaded by TFDS: put its files in "
                                f"{manual_dir} as its TFDS catalog page says, and run again")
            try:
                cifar.prepare_with_tfds(builder)
            except cifar.download_failures() as error:
                raise UserError(f"tfds:{name}: downloading and preparing it in "
                                f"{builder.data_dir_root} failed ({cifar.first_line(error)}); "
                                "nothing of the attempt is left there: check the network and "
                                "run again, or pass --data_dir=DIR with it prepared") from None
        read = lambda split: _stack(_resized(builder.as_dataset(split=split, as_supervised=True),
                                             image_size))
        train_images, train_labels = read("train")
        held_out = next((s for s in HELD_OUT_SPLITS if s in splits), None)
        if held_out is None:
            return _hold_out(train_images, train_labels, validation_split, seed)
        return (train_images, train_labels, *read(held_out))

    info = DatasetInfo(f"tfds:{name}", num_classes=num_classes, image_shape=(size, size, 3),
                       num_train=0, num_test=0)
    return DatasetSource(info=info, load=load, normalization="computed")


# ---------------------------------------------------------------------------- folder


def _class_folders(directory):
    return sorted(entry for entry in os.listdir(directory)
                  if os.path.isdir(os.path.join(directory, entry)))


# The parts of a TensorFlow op error around its message: "{{function_node ...}} " and " [Op:...".
_OP_ERROR_FRAME = re.compile(r"^\{\{.*?\}\}\s*|\s*\[Op:.*$", re.S)


def _decoded(path):
    """The image file `path` decoded as image_dataset_from_directory decodes it; a
    UserError naming it when it is empty, truncated or not an image."""
    import tensorflow as tf

    try:
        return tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        reason = _OP_ERROR_FRAME.sub("", error.message)
        raise UserError(f"{path} is not a readable image ({reason}); replace or remove it") from None


def _first_image_size(directory):
    for root, _, names in sorted(os.walk(directory)):
        for file_name in sorted(names):
            if file_name.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif")):
                return int(_decoded(os.path.join(root, file_name)).shape[0])
    raise UserError(f"folder:{directory} holds no .png, .jpg, .jpeg, .bmp or .gif image")


def _check_same_classes(directory, train_classes, test_classes):
    if train_classes != test_classes:
        only = [f"only in {split}/: {', '.join(sorted(names))}" for split, names in
                (("train", set(train_classes) - set(test_classes)),
                 ("test", set(test_classes) - set(train_classes))) if names]
        raise UserError(f"folder:{directory}: train/ and test/ hold different classes "
                        f"({'; '.join(only)}); give both the same class subfolders")


def folder_source(directory, data_dir=None, image_size=None, download=True,
                  validation_split=0.2, seed=0):
    """A DatasetSource for `folder:<dir>` (see the module docstring)."""
    del data_dir, download
    if not os.path.isdir(directory):
        raise UserError(f"folder:{directory} is not a directory")
    split_dirs = [os.path.join(directory, split) for split in ("train", "test")]
    presplit = all(os.path.isdir(path) for path in split_dirs)
    class_root = split_dirs[0] if presplit else directory
    class_names = _class_folders(class_root)
    if len(class_names) < 2:
        raise UserError(f"folder:{directory} needs one subfolder per class (at least 2), "
                        f"found {len(class_names)}")
    if presplit:
        _check_same_classes(directory, class_names, _class_folders(split_dirs[1]))
    size = image_size or _first_image_size(class_root)

    def read(path):
        import keras
        import tensorflow as tf

        dataset = keras.utils.image_dataset_from_directory(
            path, labels="inferred", label_mode="int", class_names=class_names,
            image_size=(size, size), batch_size=None, shuffle=False, verbose=False)
        try:
            return _stack(dataset)
        except tf.errors.InvalidArgumentError:
            for file_path in dataset.file_paths:  # the failure does not say which file it was
                _decoded(file_path)
            raise

    def load(_data_dir=None, _download=False):
        if presplit:
            return (*read(split_dirs[0]), *read(split_dirs[1]))
        return _hold_out(*read(directory), validation_split, seed)

    info = DatasetInfo(f"folder:{directory}", num_classes=len(class_names),
                       image_shape=(size, size, 3), num_train=0, num_test=0)
    return DatasetSource(info=info, load=load, normalization="computed")


DATASET_KINDS.register("tfds", tfds_source)
DATASET_KINDS.register("folder", folder_source)
