"""The Distiller's update rule, checked against hand-computed values and against
gradients taken independently of its train step."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.distill.base import DistillationMethod
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.train_step import (clip_includes_weight_decay, clip_threshold_scale,
                                         combine_gradients)
from sskd_tf.training.schedule import EpochCut, clip_sigmoid, learning_rate_schedule


def _clip(epoch, rule, g_ce, g_wd, g_kd):
    return combine_gradients([g_ce], [g_wd], [g_kd], "clip", clip_threshold_scale(epoch, rule),
                             clip_includes_weight_decay(rule))


def test_kd_methods_clip_rule_on_hand_values():
    g_ce, g_wd, g_kd = tf.constant([3.0, 4.0]), tf.constant([1.0, 1.0]), tf.constant([6.0, 8.0])
    # ||g_ce|| = 5, sigmoid(0) = 0.5: threshold 2.5, so g_kd [6, 8] becomes [1.5, 2].
    grads, ratio = _clip(0.0, "kd_methods", g_ce, g_wd, g_kd)
    np.testing.assert_allclose(grads[0].numpy(), [5.5, 7.0])
    np.testing.assert_allclose(ratio.numpy(), 0.25)
    # A variable without a cross-entropy gradient: threshold 0, g_kd is dropped.
    grads, _ = _clip(0.0, "kd_methods", None, tf.constant([0.0, 2.0]), tf.constant([3.0, 4.0]))
    np.testing.assert_allclose(grads[0].numpy(), [0.0, 2.0])


def test_eccv2018_clip_rule_bounds_g_kd_by_the_task_gradient_with_weight_decay():
    g_ce, g_wd, g_kd = tf.constant([3.0, 4.0]), tf.constant([1.0, 1.0]), tf.constant([6.0, 8.0])
    # g_task = [4, 5], ||g_task|| = sqrt(41) (not ||g_ce|| = 5); sigmoid(0) = 0.5:
    # threshold sqrt(41) / 2 = 3.2016, so g_kd (norm 10) is scaled by 0.32016.
    grads, ratio = _clip(0.0, "eccv2018", g_ce, g_wd, g_kd)
    kept = np.sqrt(41.0) / 2.0 / 10.0
    np.testing.assert_allclose(grads[0].numpy(), [4.0 + 6.0 * kept, 5.0 + 8.0 * kept], rtol=1e-6)
    np.testing.assert_allclose(ratio.numpy(), kept, rtol=1e-6)
    # Epoch 3: threshold sqrt(41) * sigmoid(3) = 6.0995, g_kd not scaled beforehand.
    grads, _ = _clip(3.0, "eccv2018", g_ce, g_wd, g_kd)
    kept = np.sqrt(41.0) / (1.0 + np.exp(-3.0)) / 10.0
    np.testing.assert_allclose(grads[0].numpy(), [4.0 + 6.0 * kept, 5.0 + 8.0 * kept], rtol=1e-6)
    # A small g_kd passes whole: [0.3, 0.4] has norm 0.5 < 3.2.
    grads, ratio = _clip(0.0, "eccv2018", g_ce, g_wd, tf.constant([0.3, 0.4]))
    np.testing.assert_allclose(grads[0].numpy(), [4.3, 5.4], rtol=1e-6)
    np.testing.assert_allclose(ratio.numpy(), 1.0)
    # Without a cross-entropy gradient the weight decay alone sets the threshold:
    # ||[0, 2]|| * 0.5 = 1, so [3, 4] becomes [0.6, 0.8].
    grads, _ = _clip(0.0, "eccv2018", None, tf.constant([0.0, 2.0]), tf.constant([3.0, 4.0]))
    np.testing.assert_allclose(grads[0].numpy(), [0.6, 2.8], rtol=1e-6)


def test_sum_rule_and_unreached_variables():
    grads, ratio = combine_gradients(
        [tf.constant([1.0]), tf.constant([2.0]), None],
        [None, tf.constant([0.5]), None],
        [tf.constant([10.0]), None, None], "sum")
    np.testing.assert_allclose(grads[0].numpy(), [11.0])
    np.testing.assert_allclose(grads[1].numpy(), [2.5])
    assert grads[2] is None
    assert float(ratio) == 1.0


def test_clip_sigmoid_saturates_to_exactly_one():
    assert float(clip_sigmoid(0.0)) == pytest.approx(0.5)
    assert float(clip_sigmoid(1.0)) == pytest.approx(1 / (1 + np.exp(-1)))
    assert float(clip_sigmoid(19.0)) == 1.0


def test_learning_rate_decays_at_fractions_of_the_epochs():
    schedule = learning_rate_schedule(0.1, (0.3, 0.6, 0.8), 0.1, epochs=10,
                                      cut=EpochCut.of_steps(5))
    rates = [float(schedule(step)) for step in (0, 14, 15, 29, 30, 39, 40)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001], rtol=1e-6)


class SquaredFeatureLoss(DistillationMethod):
    """A toy method of two terms adding to 5 * sum((student - teacher feature)^2)."""

    gradient_rule = "clip"
    reduction = "sum"

    def call(self, student_out, teacher_out, labels, training=False):
        squared = tf.square(student_out["features"][0] - teacher_out["features"][0])
        return {"toy": 3.0 * tf.reduce_sum(squared), "toy_more": 2.0 * tf.reduce_sum(squared)}


def _toy_model(seed, weight_decay=0.0):
    inputs = keras.Input((3,))
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    hidden = keras.layers.Dense(4, kernel_regularizer=regularizer,
                                kernel_initializer=keras.initializers.RandomNormal(seed=seed))(inputs)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.RandomNormal(seed=seed + 1))(hidden)
    return keras.Model(inputs, {"logits": logits, "features": [hidden]})


@pytest.mark.parametrize("clip_rule", ["kd_methods", "eccv2018"])
def test_train_step_applies_the_clip_rule_to_every_variable(clip_rule):
    student, teacher = _toy_model(0, weight_decay=0.1), _toy_model(10)
    method = SquaredFeatureLoss(name="toy")
    distiller = Distiller(teacher, student, loss_of(method), steps_in_epoch=4, clip_rule=clip_rule)
    distiller.build((None, 3))
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))
    images = tf.constant(np.random.default_rng(0).normal(size=(6, 3)), tf.float32)
    labels = tf.constant([0, 1, 1, 0, 1, 0])
    before = [v.numpy() for v in student.trainable_variables]

    with tf.GradientTape(persistent=True) as tape:
        out = student(images)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, out["logits"], from_logits=True))
        wd = 0.05 * tf.reduce_sum(tf.square(student.trainable_variables[0]))
        kd = 5.0 * tf.reduce_sum(tf.square(out["features"][0] - teacher(images)["features"][0]))
    expected = []
    for v in student.trainable_variables:
        g_ce, g_wd, g_kd = tape.gradient(ce, v), tape.gradient(wd, v), tape.gradient(kd, v)
        update = g_ce.numpy() + (0 if g_wd is None else g_wd.numpy())
        if g_kd is not None:
            # epoch 0, sigmoid 0.5, times ||g_ce|| (kd_methods) or ||g_ce + g_wd|| (eccv2018)
            task = update if clip_rule == "eccv2018" else g_ce.numpy()
            threshold = 0.5 * np.linalg.norm(task)
            norm = np.linalg.norm(g_kd.numpy())
            update = update + g_kd.numpy() * min(1.0, threshold / norm)
        expected.append(update)

    logs = distiller.train_step((images, labels))
    for v, b, e in zip(student.trainable_variables, before, expected):
        np.testing.assert_allclose(b - v.numpy(), e, rtol=1e-5, atol=1e-6)
    assert float(logs["clip_ratio"]) < 1.0
    assert {"loss", "ce_loss", "wd_loss", "kd_loss", "toy_loss", "toy_more_loss", "clip_ratio",
            "accuracy"} <= set(logs)
    assert all(np.allclose(t.numpy(), t0) for t, t0 in zip(teacher.weights, [w.numpy() for w in _toy_model(10).weights]))


class SummedFeatureLoss(SquaredFeatureLoss):
    gradient_rule = "sum"


def test_train_step_of_a_sum_rule_method_descends_the_total_loss():
    student, teacher = _toy_model(0, weight_decay=0.1), _toy_model(10)
    distiller = Distiller(teacher, student, loss_of(SummedFeatureLoss(name="toy")), steps_in_epoch=4)
    distiller.build((None, 3))
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    images = tf.constant(np.random.default_rng(1).normal(size=(6, 3)), tf.float32)
    labels = tf.constant([0, 1, 1, 0, 1, 0])
    before = [v.numpy() for v in student.trainable_variables]
    with tf.GradientTape() as tape:
        out = student(images)
        total = (tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, out["logits"], from_logits=True))
                 + 0.05 * tf.reduce_sum(tf.square(student.trainable_variables[0]))
                 + 5.0 * tf.reduce_sum(tf.square(out["features"][0] - teacher(images)["features"][0])))
    expected = [g.numpy() for g in tape.gradient(total, student.trainable_variables)]
    distiller.train_step((images, labels))
    for v, b, e in zip(student.trainable_variables, before, expected):
        np.testing.assert_allclose((b - v.numpy()) / 0.5, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv,clip_rule", [
    (["--method=svd_eccv"], "eccv2018"),  # svd_eccv implies its recipe
    (["--method=svd", "--recipe=eccv2018"], "eccv2018"),
    (["--method=svd"], "kd_methods")])
def test_the_recipe_flag_reaches_the_clip_rule_of_the_traced_step(argv, clip_rule, teacher_run,
                                                                 tmp_path, monkeypatch):
    """From main.py's flags to the train step: the clip rule the traced step applies is
    the recipe's (the ECCV bound includes the weight decay's gradient)."""
    import copy
    import os

    from absl import flags as absl_flags

    import flags  # noqa: F401  (defines the flags of main.py)
    from conftest import TINY
    from sskd_tf.modes.run_config import config_from_flags
    from sskd_tf.training import run, train_step

    applied = []
    real_scale = train_step.clip_threshold_scale

    def recorded(epoch, rule, clip_scale=1.0):
        applied.append(rule)
        return real_scale(epoch, rule, clip_scale)

    monkeypatch.setattr(train_step, "clip_threshold_scale", recorded)
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", *argv])
    tiny = {name: value for name, value in TINY.items() if name not in ("student", "verbose")}
    config = config_from_flags(
        flag_values, train_dir=str(tmp_path), verbose=0,
        teacher_weights=os.path.join(teacher_run, "student.keras"), **tiny)
    run.train(config)
    assert applied and set(applied) == {clip_rule}
