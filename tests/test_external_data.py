"""Datasets named by kind: folder:<dir> (a tiny image tree made here) and tfds:<name>
(TFDS mock data, nothing downloaded); resizing, computed normalisation, scaled
augmentation."""
import copy
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags as absl_flags

import flags  # noqa: F401  (defines main.py's flags)
from sskd_tf import modes
from sskd_tf.data import build_datasets, cifar
from sskd_tf.data.recipes import AUGMENTATIONS, padding
from sskd_tf.errors import UserError

CLASS_VALUES = {"cat": 10, "dog": 200}  # every pixel of a class's images has this value


def write_image_tree(root, per_class=6, size=12):
    for name, value in CLASS_VALUES.items():
        os.makedirs(root / name, exist_ok=True)
        for number in range(per_class):
            image = tf.fill([size, size, 3], tf.constant(value, tf.uint8))
            tf.io.write_file(str(root / name / f"{number}.png"), tf.io.encode_png(image))
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSKD_TF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def labels_of(dataset, batches=None):
    """The labels of `dataset`, or of its first `batches` batches (the training stream is endless)."""
    if batches is not None:
        dataset = dataset.take(batches)
    return np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])


def test_folder_dataset_holds_out_a_split_and_normalises_with_its_own_statistics(tmp_path,
                                                                                   private_cache):
    root = write_image_tree(tmp_path / "images")
    train_ds, val_ds, info = build_datasets(f"folder:{root}", batch_size=4, eval_batch_size=4,
                                            image_size=16, validation_split=0.25, seed=3)
    assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (2, (16, 16, 3), 9, 3)
    train_labels = labels_of(train_ds, batches=3)  # one pass: ceil(9 / 4) batches, the last one short
    assert sorted(train_labels.tolist() + labels_of(val_ds).tolist()) == [0] * 6 + [1] * 6
    # Statistics by hand: every image is flat, so per channel the training split holds
    # the two class values in the proportion of their labels.
    values = np.where(train_labels == 0, 10.0, 200.0)
    mean, std = values.mean(), values.std()
    [cached] = os.listdir(private_cache / "normalization")
    with open(private_cache / "normalization" / cached) as handle:
        statistics = json.load(handle)
    np.testing.assert_allclose(statistics["mean"], [mean] * 3, rtol=1e-9)
    np.testing.assert_allclose(statistics["std"], [std] * 3, rtol=1e-6)
    for images, labels in val_ds.as_numpy_iterator():
        expected = (np.where(labels == 0, 10.0, 200.0) - mean) / std
        np.testing.assert_allclose(images, np.broadcast_to(expected[:, None, None, None], images.shape),
                                   rtol=1e-5, atol=1e-5)
    images, _ = next(iter(train_ds))
    assert images.shape[1:] == (16, 16, 3)


def test_folder_with_train_and_test_subfolders_keeps_them(tmp_path):
    root = tmp_path / "split"
    write_image_tree(root / "train", per_class=4)
    write_image_tree(root / "test", per_class=2)
    _, _, info = build_datasets(f"folder:{root}", batch_size=4)
    assert (info.num_train, info.num_test, info.image_shape) == (8, 4, (12, 12, 3))


def test_a_folder_without_class_subfolders_is_one_line(tmp_path):
    with pytest.raises(UserError, match="needs one subfolder per class"):
        build_datasets(f"folder:{tmp_path}")


def test_tfds_dataset_from_metadata_with_mock_data(monkeypatch):
    monkeypatch.setattr(cifar, "probe_url", lambda url: None)  # the mock downloads nothing
    with tfds.testing.mock_data(num_examples=12):
        train_ds, val_ds, info = build_datasets("tfds:mnist", batch_size=5, image_size=20)
        with pytest.raises(UserError, match=r"tfds:mnist is not prepared .* downloads are off"):
            build_datasets("tfds:mnist", download=False)
    assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (10, (20, 20, 3), 12, 12)
    images, labels = next(iter(train_ds))
    assert images.shape == (5, 20, 20, 3) and labels.dtype == tf.int64


def test_augmentation_padding_scales_with_the_image_size():
    assert [padding(tf.zeros([1, size, size, 3])) for size in (32, 64, 16, 4)] == [4, 8, 2, 1]
    batch = tf.random.stateless_uniform([3, 64, 64, 3], [1, 2])
    for recipe in AUGMENTATIONS.names():
        assert AUGMENTATIONS.get(recipe)(batch, tf.constant([3, 4])).shape == batch.shape


def test_main_py_trains_on_an_image_folder(tmp_path, monkeypatch):
    """main.py's flags, parsed and run in this process."""
    root = write_image_tree(tmp_path / "images", per_class=8)
    monkeypatch.setenv("SSKD_TF_CACHE", str(tmp_path / "cache"))
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--teacher=resnet8", "--student=resnet8", "--method=none",
                 f"--dataset=folder:{root}", "--image_size=16", "--epochs=1", "--batch_size=8",
                 f"--train_dir={tmp_path / 'run'}"])
    modes.run(flag_values.mode, flag_values)
    assert os.listdir(tmp_path / "cache")  # the folder's statistics, computed once
    with open(tmp_path / "run" / "results.json") as handle:
        results = json.load(handle)
    assert results["dataset"] == f"folder:{root}" and results["epochs"] == 1
