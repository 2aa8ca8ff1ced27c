"""tf.data pipelines over the in-memory arrays of `load_arrays`.

Decoding happens once, in `load_arrays`, into numpy arrays that the pipelines slice; a
`cache()` on the training side would only hold a second copy of them, so there is none. The
validation batches are normalised once and cached.

Training batches are shuffled as examples, then augmented a whole batch at a time: one
vectorised map call per batch instead of one per image keeps the pipeline well ahead of a CPU
training step, and matches KD_methods_with_TF, which augments the fed batch (its crop offset is
shared by the batch; see `recipes.kd_methods_augment`). The last, partial batch of an epoch is
kept (drop_remainder=False): every training image is seen once per epoch, as in the authors'
loop, which never skips an image.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from sskd_tf.data.catalog import get_dataset_info, load_arrays
from sskd_tf.data.names import DEFAULT_RECIPE
from sskd_tf.data.recipes import AUGMENTATIONS, normalize
from sskd_tf.errors import UserError


def build_datasets(name, data_dir=None, batch_size=128, eval_batch_size=200,
                   recipe=DEFAULT_RECIPE, seed=0, take_train=None, take_test=None):
    """Returns (train_ds, val_ds, info) for dataset `name`.

    Both datasets yield (float32 normalised images [B, 32, 32, 3], int64 labels [B]). train_ds
    reshuffles and re-augments on every pass, each pass and each batch fixed by `seed`;
    val_ds is the test split, normalised, in order. `take_train` / `take_test` keep only the
    first N examples of a split; `info` then counts the examples the datasets really hold.
    """
    augment = AUGMENTATIONS.get(recipe)
    train_images, train_labels, test_images, test_labels = load_arrays(name, data_dir)
    train_images, train_labels = train_images[:take_train], train_labels[:take_train]
    test_images, test_labels = test_images[:take_test], test_labels[:take_test]
    if not len(train_labels) or not len(test_labels):
        raise UserError(f"take_train={take_train}, take_test={take_test} leave a split empty")
    info = dataclasses.replace(get_dataset_info(name), num_train=len(train_labels),
                               num_test=len(test_labels))
    train_ds = training_pipeline(train_images, train_labels, batch_size, augment, seed)
    val_ds = evaluation_pipeline(test_images, test_labels, eval_batch_size)
    return train_ds, val_ds, info


def training_pipeline(images, labels, batch_size, augment, seed):
    """Shuffled, normalised batches of uint8 `images`, then `augment(batch, batch_seed)`.

    Deterministic given `seed`: the shuffle order and the per-batch stateless augmentation
    seeds come from two streams split from it, and both change on every pass.
    """
    shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
    batches = (tf.data.Dataset.from_tensor_slices((images, labels))
               .shuffle(len(labels), seed=int(shuffle_seed), reshuffle_each_iteration=True)
               .batch(batch_size))
    batch_seeds = tf.data.Dataset.random(
        seed=int(augment_seed), rerandomize_each_iteration=True).batch(2)

    def preprocess(batch, batch_seed):
        batch_images, batch_labels = batch
        return augment(normalize(batch_images), batch_seed), batch_labels

    return (tf.data.Dataset.zip(batches, batch_seeds)
            .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def evaluation_pipeline(images, labels, batch_size):
    """Normalised batches of uint8 `images` in order, computed once and cached."""
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .batch(batch_size)
            .map(lambda batch_images, batch_labels: (normalize(batch_images), batch_labels),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .prefetch(tf.data.AUTOTUNE))
