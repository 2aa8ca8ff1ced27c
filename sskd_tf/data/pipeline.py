"""tf.data pipelines over the in-memory arrays of `load_arrays`.

Decoding happens once, in `load_arrays`, into numpy arrays that the pipelines slice; a
`cache()` on the training side would only hold a second copy of them, so there is none. The
validation batches are normalised once and cached.

The training side is one endless stream of batches that can start at any global step
without computing the batches before it, which is how a resumed run replays what an
uninterrupted one would have trained on. Two streams, one per kind of epoch cut
(training/schedule.py):

- full batches (the authors' cuts): the examples of pass after pass, each pass a stateless
  permutation keyed by (seed, pass), cut into batches of exactly B that run across the
  passes' boundaries, as KD_methods_with_TF's `train_w_distill.py` appends the next
  permutation to the images a pass leaves over, and as SSKD_SVD's input queue flows;
  batch i is a pure function of (seed, i);
- one pass an epoch ("pass"): each pass cut into ceil(N / B) batches, the last one partial,
  batch `step` of pass p a pure function of (seed, p, step).

Each batch is augmented whole: one vectorised map call per batch instead of one per image
keeps the pipeline well ahead of a CPU training step, and matches KD_methods_with_TF, which
augments the fed batch (its crop offset is shared by the batch; see
`recipes.kd_methods_augment`). The augmentation draws of a batch are keyed by the same
coordinates as its examples. A batch is normalised, then augmented, or for the recipes of
`recipes.PIXEL_AUGMENTATIONS` augmented, then normalised.
"""
import dataclasses
import hashlib
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from sskd_tf.data.catalog import read_arrays, source_of
from sskd_tf.data.names import DEFAULT_RECIPE
from sskd_tf.data.recipes import (AUGMENTATIONS, CIFAR_MEAN, CIFAR_NORMALIZATIONS, CIFAR_STD,
                                  PIXEL_AUGMENTATIONS, normalize)
from sskd_tf.errors import UserError


@dataclasses.dataclass
class RunData:
    """A run's data: its arrays, ready to stream (`training`) and to validate on (`validation`).

    info: the DatasetInfo, counting the examples the splits really hold. digest: sha256 of
    the arrays the run trains and validates on (after slicing and resizing), which
    identifies the data wherever they were read from. augment_pixels: `augment` acts on the
    pixels, before normalisation.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    batch_size: int
    augment: object
    seed: int
    mean: tuple
    std: tuple
    validation: tf.data.Dataset
    info: object
    digest: str
    augment_pixels: bool = False

    def training(self, start_step=0, full_batches=False, inputs=()):
        """The endless training stream from global step `start_step` on: full batches across
        passes (`full_batch_stream`) or one pass an epoch (`pass_stream`). inputs: what a
        method reads beside the images (`BATCH_INPUTS`); with any, a batch's images come as
        {"images": ..., <input>: ...}."""
        stream = full_batch_stream if full_batches else pass_stream
        return stream(self.train_images, self.train_labels, self.batch_size, self.augment,
                      self.seed, self.mean, self.std, start_step, self.augment_pixels, inputs)


def load_run_data(name, data_dir=None, batch_size=128, eval_batch_size=200,
                  recipe=DEFAULT_RECIPE, seed=0, take_train=None, take_test=None,
                  image_size=None, download=True, validation_split=0.2):
    """The RunData of dataset `name`.

    Batches yield (float32 normalised images [B, H, W, 3], int64 labels [B]); the validation
    set is the test split, normalised, in order. `take_train` / `take_test` keep only the
    first N examples of a split. image_size: resize to image_size x image_size (None: the
    dataset's own size). download, validation_split: options of "<kind>:" datasets
    (data/external.py).
    """
    augment = AUGMENTATIONS.get(recipe)
    source = source_of(name, data_dir=data_dir, image_size=image_size, download=download,
                       validation_split=validation_split, seed=seed)
    train_images, train_labels, test_images, test_labels = read_arrays(source, data_dir, download)
    train_images, test_images = resize(train_images, image_size), resize(test_images, image_size)
    mean, std = normalization(source, name, data_dir, train_images, recipe)
    train_images, train_labels = train_images[:take_train], train_labels[:take_train]
    test_images, test_labels = test_images[:take_test], test_labels[:take_test]
    if not len(train_labels) or not len(test_labels):
        raise UserError(f"take_train={take_train}, take_test={take_test} leave a split empty")
    info = dataclasses.replace(source.info, image_shape=tuple(train_images.shape[1:]),
                               num_train=len(train_labels), num_test=len(test_labels))
    return RunData(train_images, train_labels, batch_size, augment, seed, mean, std,
                   evaluation_pipeline(test_images, test_labels, eval_batch_size, mean, std),
                   info, array_digest(train_images, train_labels, test_images, test_labels),
                   augment_pixels=recipe in PIXEL_AUGMENTATIONS)


def build_datasets(name, data_dir=None, batch_size=128, eval_batch_size=200,
                   recipe=DEFAULT_RECIPE, seed=0, take_train=None, take_test=None,
                   image_size=None, download=True, validation_split=0.2, start_step=0,
                   full_batches=False):
    """(train_ds, val_ds, info) of dataset `name` (see `load_run_data`): train_ds is the
    endless training stream from global step `start_step` on (see `RunData.training`)."""
    data = load_run_data(name, data_dir, batch_size, eval_batch_size, recipe, seed, take_train,
                         take_test, image_size, download, validation_split)
    return data.training(start_step, full_batches), data.validation, data.info


def array_digest(*arrays):
    """sha256 over the dtypes, shapes and bytes of numpy arrays."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# Images resized at once: the float32 result of one chunk is the resize's only float copy.
RESIZE_CHUNK = 1024


def resize(images, image_size, chunk=RESIZE_CHUNK):
    """uint8 images resized (bilinear) to image_size x image_size, `chunk` images at a
    time; unchanged when None or already that size."""
    if image_size is None or tuple(images.shape[1:3]) == (image_size, image_size):
        return images
    return np.concatenate([
        np.clip(np.rint(np.asarray(tf.image.resize(images[start:start + chunk],
                                                   (image_size, image_size)))), 0, 255)
        .astype(np.uint8)
        for start in range(0, len(images), chunk)])


def cache_dir():
    """Where computed statistics are kept: $SSKD_TF_CACHE, else $XDG_CACHE_HOME/sskd_tf,
    else ~/.cache/sskd_tf."""
    if os.environ.get("SSKD_TF_CACHE"):
        return os.environ["SSKD_TF_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sskd_tf")


def channel_statistics(images, chunk=4096):
    """Per-channel mean and standard deviation of uint8 images, in float64."""
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].astype(np.float64).reshape(-1, images.shape[-1])
        total, squares, count = total + part.sum(0), squares + np.square(part).sum(0), count + len(part)
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - np.square(mean), 1e-12))


def normalization(source, name, data_dir, train_images, recipe=DEFAULT_RECIPE):
    """(mean, std) per channel: the recipe's CIFAR constants for the registered datasets,
    else statistics of the whole training split, computed once and cached (keyed by the
    dataset, its location and the split's shape)."""
    if source.normalization == "cifar":
        return CIFAR_NORMALIZATIONS[recipe]
    key = json.dumps([name, os.path.abspath(data_dir) if data_dir else None,
                      list(train_images.shape)])
    path = os.path.join(cache_dir(), "normalization",
                        hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    if os.path.exists(path):
        with open(path) as handle:
            cached = json.load(handle)
        return tuple(cached["mean"]), tuple(cached["std"])
    mean, std = channel_statistics(train_images)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as handle:
        json.dump({"dataset": key, "mean": mean.tolist(), "std": std.tolist()}, handle)
    os.replace(handle.name, path)
    return tuple(mean.tolist()), tuple(std.tolist())


def _stream_keys(seed):
    """(shuffle key, augmentation key) split from `seed`."""
    return tuple(int(key) for key in np.random.SeedSequence(seed).generate_state(2))


def _pass_order(shuffle_key, count, pass_index):
    """The permutation of the examples that pass `pass_index` visits."""
    pass_key = tf.stack([tf.constant(shuffle_key, tf.int64), pass_index])
    return tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), pass_key)


# What a batch can carry beside its images: each example's index in the training set, and
# the batch augmented a second time (seed fold_in(batch seed, 1)).
BATCH_INPUTS = ("sample_indices", "second_view")


def _batch_maker(images, labels, augment, mean, std, augment_pixels, inputs=()):
    unknown = set(inputs) - set(BATCH_INPUTS)
    if unknown:
        raise ValueError(f"unknown batch inputs {sorted(unknown)}; choose from {BATCH_INPUTS}")
    images, labels = tf.constant(images), tf.constant(labels)

    def augmented(batch_images, batch_seed):
        if augment_pixels:
            return normalize(augment(batch_images, batch_seed), mean, std)
        return augment(normalize(batch_images, mean, std), batch_seed)

    def make_batch(indices, batch_seed):
        batch_images = tf.gather(images, indices)
        first = augmented(batch_images, batch_seed)
        if not inputs:
            return first, tf.gather(labels, indices)
        extras = {"images": first}
        if "sample_indices" in inputs:
            extras["sample_indices"] = indices
        if "second_view" in inputs:
            extras["second_view"] = augmented(
                batch_images, tf.random.experimental.stateless_fold_in(batch_seed, 1))
        return extras, tf.gather(labels, indices)

    return make_batch


def full_batch_stream(images, labels, batch_size, augment, seed, mean=CIFAR_MEAN, std=CIFAR_STD,
                      start_step=0, augment_pixels=False, inputs=()):
    """Endless full batches of uint8 `images` normalised by (mean, std) and augmented (after
    normalising, or before with augment_pixels), from global step `start_step` on.

    The examples flow pass after pass, pass p in the order of `stateless_shuffle` keyed by
    (shuffle key, p), and every B consecutive ones make a batch, across the passes'
    boundaries: batch i holds the examples at positions [i B, (i + 1) B) of that flow, and
    is augmented with the seed (augmentation key, i). The keys are split from `seed`. The
    batches before `start_step` are skipped as positions, before any image is gathered.
    inputs: see `RunData.training`.
    """
    count = len(labels)
    shuffle_key, augment_key = _stream_keys(seed)
    make_batch = _batch_maker(images, labels, augment, mean, std, augment_pixels, inputs)
    first_position = start_step * batch_size

    def batch(step, indices):
        return make_batch(indices, tf.stack([tf.constant(augment_key, tf.int64), step]))

    return (tf.data.Dataset.range(first_position // count, np.iinfo(np.int64).max)
            .flat_map(lambda pass_index: tf.data.Dataset.from_tensor_slices(
                _pass_order(shuffle_key, count, pass_index)))
            .skip(first_position % count)
            .batch(batch_size, drop_remainder=True)
            .enumerate(start=start_step)
            .map(batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def pass_stream(images, labels, batch_size, augment, seed, mean=CIFAR_MEAN, std=CIFAR_STD,
                start_step=0, augment_pixels=False, inputs=()):
    """Endless batches of uint8 `images` normalised by (mean, std), one pass after another,
    from global step `start_step` on (pass start_step // S, batch start_step % S of it, with
    S = ceil(N / B) batches a pass).

    Pass p is a permutation of the examples drawn by `stateless_shuffle` keyed by
    (shuffle key, p), cut into batches (the last one partial); batch `step` of it is
    normalised, then `augment(batch, batch_seed)` (the other way round with augment_pixels)
    with batch_seed = fold_in((augment key, p), step). The two keys are split from `seed`.
    The skipped batches are dropped as index ranges, before any image is gathered or
    augmented. inputs: see `RunData.training`.
    """
    count = len(labels)
    shuffle_key, augment_key = _stream_keys(seed)
    make_batch = _batch_maker(images, labels, augment, mean, std, augment_pixels, inputs)
    start_pass, skip_steps = divmod(start_step, -(-count // batch_size))

    def batch_indices(pass_index):
        first_step = tf.where(pass_index == start_pass, tf.constant(skip_steps, tf.int64), 0)
        return (tf.data.Dataset.from_tensor_slices(_pass_order(shuffle_key, count, pass_index))
                .batch(batch_size).enumerate()
                .skip(first_step)
                .map(lambda step, indices: (pass_index, step, indices)))

    def batch(pass_index, step, indices):
        pass_seed = tf.stack([tf.constant(augment_key, tf.int64), pass_index])
        return make_batch(indices, tf.random.experimental.stateless_fold_in(pass_seed, step))

    return (tf.data.Dataset.range(start_pass, np.iinfo(np.int64).max)
            .flat_map(batch_indices)
            .map(batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def evaluation_pipeline(images, labels, batch_size, mean=CIFAR_MEAN, std=CIFAR_STD):
    """Normalised batches of uint8 `images` in order, computed once and cached."""
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .batch(batch_size)
            .map(lambda batch_images, batch_labels: (normalize(batch_images, mean, std),
                                                     batch_labels),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .prefetch(tf.data.AUTOTUNE))
