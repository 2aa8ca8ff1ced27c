"""tf.data pipelines over the in-memory arrays of `load_arrays`.

Decoding happens once, in `load_arrays`, into numpy arrays that the pipelines slice; a
`cache()` on the training side would only hold a second copy of them, so there is none. The
validation batches are normalised once and cached.

The training side is one endless stream of batches, pass after pass. Batch `step` of pass `p`
is a pure function of (seed, p, step): the pass's order is a stateless permutation keyed by
(seed, p), and the batch's augmentation draws are keyed by (seed, p, step). A stream can so
start at any batch without computing the ones before it, which is how a resumed run replays
what an uninterrupted one would have trained on. Each batch is augmented whole: one vectorised
map call per batch instead of one per image keeps the pipeline well ahead of a CPU training
step, and matches KD_methods_with_TF, which augments the fed batch (its crop offset is shared by
the batch; see `recipes.kd_methods_augment`). The last, partial batch of a pass is kept: every
training image is seen once per pass, as in the authors' loop, which never skips an image.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from sskd_tf.data.catalog import get_dataset_info, load_arrays
from sskd_tf.data.names import DEFAULT_RECIPE
from sskd_tf.data.recipes import AUGMENTATIONS, normalize


def build_datasets(name, data_dir=None, batch_size=128, eval_batch_size=200,
                   recipe=DEFAULT_RECIPE, seed=0, take_train=None, take_test=None, start_pass=0,
                   skip_steps=0):
    """Returns (train_ds, val_ds, info) for dataset `name`.

    Both datasets yield (float32 normalised images [B, 32, 32, 3], int64 labels [B]). train_ds
    is the endless `training_stream` from pass `start_pass` on, without the first
    `skip_steps` batches of that pass (a run that finished e epochs and s steps of the next
    resumes at e, s); a pass is ceil(num_train / batch_size) batches. val_ds is the test split,
    normalised, in order. `take_train` / `take_test` keep only the first N examples of a
    split; `info` then counts the examples the datasets really hold.
    """
    augment = AUGMENTATIONS.get(recipe)
    train_images, train_labels, test_images, test_labels = load_arrays(name, data_dir)
    train_images, train_labels = train_images[:take_train], train_labels[:take_train]
    test_images, test_labels = test_images[:take_test], test_labels[:take_test]
    if not len(train_labels) or not len(test_labels):
        raise ValueError(f"take_train={take_train}, take_test={take_test} leave a split empty")
    info = dataclasses.replace(get_dataset_info(name), num_train=len(train_labels),
                               num_test=len(test_labels))
    train_ds = training_stream(train_images, train_labels, batch_size, augment, seed,
                               start_pass, skip_steps)
    val_ds = evaluation_pipeline(test_images, test_labels, eval_batch_size)
    return train_ds, val_ds, info


def training_stream(images, labels, batch_size, augment, seed, start_pass=0, skip_steps=0):
    """Endless normalised batches of uint8 `images`, pass after pass, from pass `start_pass`
    without its first `skip_steps` batches.

    Pass p is a permutation of the examples drawn by `stateless_shuffle` keyed by
    (shuffle key, p), cut into batches; batch `step` of it is normalised, then
    `augment(batch, batch_seed)` with batch_seed = fold_in((augment key, p), step). The two
    keys are split from `seed`. The skipped batches are dropped as index ranges, before any
    image is gathered or augmented.
    """
    count = len(labels)
    shuffle_key, augment_key = (int(key) for key in np.random.SeedSequence(seed).generate_state(2))
    images, labels = tf.constant(images), tf.constant(labels)

    def batch_indices(pass_index):
        pass_key = tf.stack([tf.constant(shuffle_key, tf.int64), pass_index])
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), pass_key)
        first_step = tf.where(pass_index == start_pass, tf.constant(skip_steps, tf.int64), 0)
        return (tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
                .skip(first_step)
                .map(lambda step, indices: (pass_index, step, indices)))

    def make_batch(pass_index, step, indices):
        pass_seed = tf.stack([tf.constant(augment_key, tf.int64), pass_index])
        batch_seed = tf.random.experimental.stateless_fold_in(pass_seed, step)
        batch_images = normalize(tf.gather(images, indices))
        return augment(batch_images, batch_seed), tf.gather(labels, indices)

    return (tf.data.Dataset.range(start_pass, np.iinfo(np.int64).max)
            .flat_map(batch_indices)
            .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def evaluation_pipeline(images, labels, batch_size):
    """Normalised batches of uint8 `images` in order, computed once and cached."""
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .batch(batch_size)
            .map(lambda batch_images, batch_labels: (normalize(batch_images), batch_labels),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .prefetch(tf.data.AUTOTUNE))
