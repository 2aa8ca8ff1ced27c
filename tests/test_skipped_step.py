"""A step with a non-finite loss leaves every variable as it was: the student's weights
and BN moving statistics, the method's own layers and statistics, the optimizer's
slots and step count; on one device and on two logical CPUs."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf import models
from sskd_tf.distill import build_method
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.optimizers import TF1Momentum

from main_cli import REPO

SHAPE = (8, 8, 3)


def _batch(poison):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8,) + SHAPE).astype("float32")
    if poison:
        images[5] = np.nan  # the second replica's half under a 2-replica strategy
    labels = rng.integers(0, 3, size=8)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def skipped_step_report(strategy, jit=False):
    """One finite step, then one with a NaN image: which variables each step changed
    (every replica's copy compared, bit for bit), with the step XLA-compiled if `jit`."""
    with strategy.scope():
        keras.utils.set_random_seed(0)
        student = models.build_model("resnet8", 3, input_shape=SHAPE, weight_decay=5e-4)
        method = build_method("self_distill")  # its own BN layers: state of the method
        distiller = Distiller(None, student, loss_of(method), steps_in_epoch=10)
        distiller.build((None,) + SHAPE)
        distiller.compile(optimizer=TF1Momentum(0.1), jit_compile=jit)
        distiller.optimizer.build(distiller.trainable_variables)
    tracked = {f"student/{v.path}": v for v in student.variables}
    tracked.update({f"method/{v.path}": v for v in method.variables})
    tracked.update({f"optimizer/{v.path}": v for v in distiller.optimizer.variables})

    def values():
        return {name: [np.array(x) for x in strategy.experimental_local_results(v.value)]
                for name, v in tracked.items()}

    def changed(before, after):
        return sorted(name for name in before
                      if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name])))

    initial = values()
    distiller.fit(_batch(poison=False), epochs=1, verbose=0)
    after_finite = values()
    distiller.fit(_batch(poison=True), epochs=1, verbose=0)
    after_nan = values()
    return {
        "replicas": strategy.num_replicas_in_sync,
        "changed_by_finite_step": changed(initial, after_finite),
        "changed_by_nan_step": changed(after_finite, after_nan),
        "skipped": float(distiller.trackers["skipped_steps"].result()),
        "variables": len(tracked),
    }


def _check(report):
    finite = report["changed_by_finite_step"]
    # The finite step moves BN statistics of the student and of the method, and the optimizer.
    assert any(name.startswith("student/") and "moving_variance" in name for name in finite)
    assert any(name.startswith("method/") and "moving_mean" in name for name in finite)
    assert any(name.startswith("optimizer/") and "accumulator" in name for name in finite)
    assert report["changed_by_nan_step"] == []
    assert report["skipped"] == 1.0


@pytest.mark.parametrize("jit", [False, True])
def test_a_skipped_step_leaves_every_variable_bit_identical_on_one_device(jit):
    _check(skipped_step_report(tf.distribute.get_strategy(), jit))


MIRRORED_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
from sskd_tf.training.strategy import make_strategy
from test_skipped_step import skipped_step_report
json.dump(skipped_step_report(make_strategy("mirrored")), sys.stdout)
"""


@pytest.mark.slow  # a second process of two CPUs; test_replicas.py skips a NaN step on both
def test_a_skipped_step_leaves_every_replica_bit_identical_on_two_cpus():
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO, capture_output=True,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    _check(report)
