"""Part 4: input-pipeline throughput, `sskd_tf.data.build_datasets` on a synthetic
CIFAR-100 (random uint8 images written in the python archive's layout to a temporary
directory), for each preprocessing recipe. Measured alone, so the images/s are what
the pipeline can deliver; its CPU seconds per batch are what it takes from a training
step running beside it on the same cores.
"""
import os
import pickle
import tempfile
import time

import numpy as np

from sskd_tf.data import RECIPES, build_datasets

FOLDER = "cifar-100-python"


def write_synthetic_cifar100(directory, num_train, num_test=1000, seed=0):
    """`directory`/cifar-100-python/{train,test} holding random images and labels."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, FOLDER), exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        batch = {b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, size=count).tolist()}
        with open(os.path.join(directory, FOLDER, split), "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def throughput(recipe, batch_size, batches, num_train, warmup=5):
    """Images per second and CPU seconds per batch of the training pipeline."""
    with tempfile.TemporaryDirectory() as directory:
        write_synthetic_cifar100(directory, num_train)
        train_ds, _, _ = build_datasets("cifar100", directory, batch_size=batch_size,
                                        recipe=recipe)
        iterator = iter(train_ds.repeat())
        for _ in range(warmup):
            next(iterator)
        wall, cpu = time.perf_counter(), time.process_time()
        images = sum(int(next(iterator)[1].shape[0]) for _ in range(batches))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"recipe": recipe, "images_per_s": images / wall, "cpu_s_per_batch": cpu / batches,
            "batches": batches}


def all_recipes(batch_size, batches, num_train):
    return [throughput(recipe, batch_size, batches, num_train) for recipe in RECIPES]
