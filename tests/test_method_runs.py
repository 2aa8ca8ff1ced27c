"""Every registered method through one traced train step of the Distiller on a toy network
(its own loss terms positive and finite, the student moved), and one end-to-end digits run
per kind of method from the session's teacher: logits (soft_logits), one map per tap (at),
an initialisation stage (fitnet), several maps related (svd, through main.py's command
line). Self-distillation's run is tests/test_compare.py's; the student alone is the session
teacher's own run (conftest.py)."""
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY
from main_cli import REPO
from sskd_tf.distill import build_method
from sskd_tf.distill.names import METHOD_NAMES
from sskd_tf.training.callbacks import read_history
from sskd_tf.training.config import RunConfig
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.run import needs_trained_teacher, train
from toy_networks import pre_activation_network


def _toy(seed, widths=(4, 8, 8)):
    """{"logits", "features"} of 8x8x3 images with three taps (8x8, 4x4, 2x2 of `widths`)."""
    initializer = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    x = inputs = keras.Input((8, 8, 3))
    taps = []
    for width, stride in zip(widths, (1, 2, 2)):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu",
                                kernel_initializer=initializer)(x)
        taps.append(x)
    logits = keras.layers.Dense(5, kernel_initializer=initializer)(
        keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, {"logits": logits, "features": taps})


TOYS = {"co": pre_activation_network}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_trains_its_own_terms_in_a_traced_step(method):
    """One traced step of each of the method's stages, after the method's `prepare` (as
    `fit` runs it): the terms the stage computes are positive and finite, and what it
    trains moves."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(6, 8, 8, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 5, size=6))
    toy = TOYS.get(method, _toy)
    student, teacher = toy(1), toy(2)
    built = build_method(method)
    inputs = {"images": images, "sample_indices": tf.range(6, dtype=tf.int64),
              "second_view": images[::-1]}
    batch = ({name: inputs[name] for name in ("images",) + built.batch_inputs()}
             if built.batch_inputs() else images)
    built.prepare(teacher, tf.data.Dataset.from_tensors((batch, labels)))  # as a run does
    distiller = Distiller(teacher if built.needs_teacher else None, student, loss_of(built),
                          steps_in_epoch=1)
    distiller.build((None, 8, 8, 3))
    distiller.method.prepare(distiller._teacher_net, tf.data.Dataset.from_tensors(
        (images, labels)))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    distiller.optimizer.build(distiller.trainable_variables)
    for stage in distiller.stage_plan.stages:
        distiller.select_stage(distiller.stage_plan.first_epoch(stage))
        trained = [w for network in distiller._networks(stage.trains)
                   for w in network.trainable_weights]
        before = [w.numpy().copy() for w in trained]
        logs = tf.function(distiller.train_step)((batch, labels))
        computed = {name for update in stage.updates if update.distillation
                    for name in distiller._loss_of(update)(
                        student(images), teacher(images) if built.needs_teacher else None,
                        labels, **distiller._method_inputs({
                            "stage_epoch": tf.constant(0.0), **inputs}))}
        terms = {name: float(logs[f"{name}_loss"]) for name in computed}
        assert all(math.isfinite(v) and v > 0 for v in terms.values()), (stage.name, terms)
        distils = any(update.distillation for update in stage.updates)
        assert bool(terms) == (distils and method != "none"), (stage.name, terms)
        assert int(logs["skipped_steps"]) == 0
        assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, trained)), stage.name


def check_run(train_dir, epochs):
    with open(os.path.join(train_dir, "results.json")) as handle:
        results = json.load(handle)
    assert results["epochs"] == epochs
    history = read_history(train_dir)
    assert len(history) == epochs == len(results["val_accuracy"])
    for row in history:
        assert all(math.isfinite(float(value)) for value in row.values())
    return results, history


@pytest.mark.parametrize("method, options, term", [
    ("soft_logits", {}, "soft_logits_loss"),  # logits
    ("at", {}, "attention_loss"),  # maps
    ("crd", {"num_negatives": 16}, "crd_loss"),  # the examples' indices, memory banks
    ("dml", {}, "dml_loss"),  # a peer trained from its initialisation, in the same step
])
def test_a_method_of_each_kind_trains_an_epoch(method, options, term, teacher_run, tmp_path):
    pretrained = needs_trained_teacher(method)
    train(RunConfig(method=method, method_options=options, train_dir=str(tmp_path),
                    teacher_weights=os.path.join(teacher_run, "student.keras") if pretrained
                    else None, **TINY))
    results, history = check_run(str(tmp_path), epochs=1)
    assert results["method"] == method and not os.path.exists(tmp_path / "teacher")
    assert float(history[0][term]) > 0
    peer_accuracy = results["trained_teacher_last_val_accuracy"]
    assert (peer_accuracy is None) == pretrained
    if not pretrained:  # the peer's own validation, beside the student's
        assert 0 <= peer_accuracy <= 1 and "val_teacher_accuracy" in history[0]


def test_a_stage_method_trains_its_initialisation_epochs_first(teacher_run, tmp_path):
    """FitNet with one initialisation epoch: two epochs in all, the first on the hints
    alone, the second on the task alone (its hints are not computed), the learning
    rate's schedule starting after the first."""
    train(RunConfig(method="fitnet", method_options={"init_epochs": 1}, train_dir=str(tmp_path),
                    teacher_weights=os.path.join(teacher_run, "student.keras"), **TINY))
    _, history = check_run(str(tmp_path), epochs=2)
    assert [int(row["steps"]) for row in history] == [2, 3]  # int(2 * 128 / 64) + 1 = 5
    assert float(history[0]["hint_loss"]) > 0 and float(history[1]["hint_loss"]) == 0


def test_main_py_distils_with_svd(teacher_run, tmp_path):
    command = [sys.executable, "main.py", "--teacher=resnet8", "--student=resnet8", "--method=svd",
               "--dataset=digits", "--image_size=8", "--epochs=1", "--batch_size=64",
               f"--take_train={TINY['take_train']}", f"--take_test={TINY['take_test']}",
               f"--teacher_weights={os.path.join(teacher_run, 'student.keras')}",
               f"--train_dir={tmp_path / 'run'}"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results, history = check_run(str(tmp_path / "run"), epochs=1)
    assert results["method"] == "svd" and results["teacher"] == "resnet8"
    assert float(history[0]["svd_loss"]) > 0 and 0 < float(history[0]["clip_ratio"]) <= 1
    with open(os.path.join(teacher_run, "results.json")) as handle:
        teacher = json.load(handle)
    assert results["teacher_val_accuracy"] == pytest.approx(teacher["last_val_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("mixed_precision", ["none", "mixed_bfloat16"])
def test_svd_trains_with_the_gpu_options(mixed_precision, teacher_run, tmp_path):
    """--svd_backend=batched with the decompositions requested on the CPU, in float32 and
    with a mixed_bfloat16 student and teacher: one epoch of the digits run, finite. Long
    (tracing the batched route takes minutes on 2 cores); the short checks of the same
    train step are tests/test_batched_backend.py and tests/test_mixed_precision.py."""
    train(RunConfig(method="svd", method_options={"backend": "batched",
                                                  "decomposition_device": "cpu"},
                    mixed_precision=mixed_precision, train_dir=str(tmp_path),
                    teacher_weights=os.path.join(teacher_run, "student.keras"), **TINY))
    check_run(str(tmp_path), epochs=1)
