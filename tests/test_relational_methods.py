"""The registered methods rkd, vid, ab and co (sskd_tf/distill/rkd.py, vid.py, ab.py, co.py):
each `sskd_tf.losses` class's method against the float64 NumPy transcriptions of the loss
tests (tests/test_*_loss.py, tests/relational_reference.py) on random maps, the student
gradient of RKD's pooled embedding, the search spaces around the authors' weights, AB's
two stages (what changes in which) and CO's margins from `prepare` and its UserErrors."""
import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from relational_reference import (assert_directional_derivatives, float64_layers,
                                  post_relu_taps, randomise_affine_weights)
from sskd_tf import losses
from sskd_tf.distill import METHODS
from sskd_tf.distill.co import tap_batch_norms
from sskd_tf.errors import UserError
from sskd_tf.training.distiller import Distiller
from toy_networks import pre_activation_network
from sskd_tf.training.loss_set import _TapSelection
from test_ab_loss import reference_connected as ab_connected
from test_ab_loss import reference_tap_loss as ab_tap_loss
from test_co_loss import reference_connected as co_connected
from test_co_loss import reference_margin
from test_co_loss import reference_tap_loss as co_tap_loss
from test_rkd_loss import reference_rkd
from test_vid_loss import reference_arguments
from test_vid_loss import reference_tap_loss as vid_tap_loss

TEACHER_TAPS = [(4, 8, 8, 8), (4, 4, 4, 16), (4, 2, 2, 32)]
STUDENT_WIDTHS = (4, 8, 16)


def outputs(features):
    """The {"logits", "features"} dict a method reads (the logits unread by these four)."""
    return {"logits": tf.zeros((features[0].shape[0], 5), features[0].dtype),
            "features": [tf.constant(feature) for feature in features]}


def built_method(loss_class, students, teachers, **options):
    """The method of `loss_class(**options)`, built in float64 on the maps' shapes, its
    affine weights (BN gamma, beta, VID's alpha) drawn at random."""
    with float64_layers():
        method = loss_class(**options).method
        method(outputs(students), outputs(teachers), None)
    randomise_affine_weights([method], np.random.default_rng(7))
    return method


def trainable_arrays(layer):
    """{path below `layer`: array} of a method's per-tap layer, e.g. "bn/gamma"."""
    return {weight.path.split(f"{layer.name}/", 1)[1]: weight.numpy()
            for weight in layer.trainable_weights}


def total(terms):
    return float(tf.add_n(list(terms.values())))


def test_rkd_terms_and_student_gradient_match_the_transcription_on_the_pooled_last_map():
    rng = np.random.default_rng(0)
    student_shapes, students, teachers = post_relu_taps(TEACHER_TAPS, STUDENT_WIDTHS, rng)
    with float64_layers():
        method = losses.RKDDistillation().method
    assert (method.options.distance_weight, method.options.angle_weight) == (25.0, 50.0)
    assert method.gradient_rule == "sum" and method.stage_plan().offset == 0
    teacher_embedding = teachers[-1].mean(axis=(1, 2))
    student_map = tf.constant(students[-1])
    with tf.GradientTape() as tape:
        tape.watch(student_map)
        terms = method({"logits": None, "features": [tf.constant(s) for s in students[:-1]]
                        + [student_map]}, outputs(teachers), None)
        loss = tf.add_n(list(terms.values()))
    assert set(terms) == {"rkd_distance", "rkd_angle"}

    def reference(student_last_map):
        return reference_rkd(student_last_map.mean(axis=(1, 2)), teacher_embedding)

    np.testing.assert_allclose(float(loss), reference(students[-1]), rtol=1e-10)
    assert_directional_derivatives(reference, students[-1], tape.gradient(loss, student_map).numpy(),
                                   rng)
    # The distance and the angle terms each carry their own weight.
    with float64_layers():
        scaled = losses.RKDDistillation(distance_weight=50.0, angle_weight=0.0).method
    scaled = scaled(outputs(students), outputs(teachers), None)
    np.testing.assert_allclose(float(scaled["rkd_distance"]), 2 * float(terms["rkd_distance"]),
                               rtol=1e-10)
    assert float(scaled["rkd_angle"]) == 0.0


def test_vid_matches_the_transcription_with_regressors_and_variances_of_its_own():
    rng = np.random.default_rng(1)
    _, students, teachers = post_relu_taps(TEACHER_TAPS, STUDENT_WIDTHS, rng)
    method = built_method(losses.VIDDistillation, students, teachers)
    assert method.gradient_rule == "sum" and method.stage_plan().offset == 0
    alphas = [weight for weight in method.trainable_weights if weight.path.endswith("/alpha")]
    assert [tuple(alpha.shape) for alpha in alphas] == [(8,), (16,), (32,)]
    expected = sum(vid_tap_loss(student, teacher, *reference_arguments(trainable_arrays(regressor)))
                   for student, teacher, regressor in zip(students, teachers, method.regressors))
    terms = method(outputs(students), outputs(teachers), None)
    assert set(terms) == {"vid"}
    np.testing.assert_allclose(total(terms), expected, rtol=1e-10)
    # Its weight decay (5e-4 on the fc kernels and BN affines, none on alpha) is the method's.
    assert len(method.losses) == 3 * 3 * 3


def test_ab_matches_the_transcription():
    rng = np.random.default_rng(2)
    _, students, teachers = post_relu_taps(TEACHER_TAPS, STUDENT_WIDTHS, rng)
    teachers = [teacher - 0.5 for teacher in teachers]  # both signs, as the hinges need
    method = built_method(losses.ABDistillation, students, teachers)
    expected = sum(3e-3 * 2.0 ** tap * ab_tap_loss(ab_connected(s, trainable_arrays(c)), t)
                   for tap, (s, t, c) in enumerate(zip(students, teachers, method.connectors)))
    terms = method(outputs(students), outputs(teachers), None)
    assert set(terms) == {"ab"}
    np.testing.assert_allclose(total(terms), expected, rtol=1e-10)
    with float64_layers():
        halved = losses.ABDistillation(margin=0.5, weight=1.0).method
        halved(outputs(students), outputs(teachers), None)
    for mine, theirs in zip(halved.weights, method.weights):
        mine.assign(theirs)
    expected = sum(2.0 ** tap * ab_tap_loss(ab_connected(s, trainable_arrays(c)), t, 0.5)
                   for tap, (s, t, c) in enumerate(zip(students, teachers, method.connectors)))
    np.testing.assert_allclose(total(halved(outputs(students), outputs(teachers), None)),
                               expected, rtol=1e-10)


def test_ab_declares_the_authors_initialisation_stage():
    init, main = losses.ABDistillation().method.stages()
    [init_update], [main_update] = init.updates, main.updates
    assert (init.name, init.epochs, init_update.task, init_update.distillation) == (
        "init", 40, False, "call")
    assert (main.name, main_update.task, main_update.distillation) == ("main", True, None)
    assert len(losses.ABDistillation(init_epochs=0).method.stages()) == 1


WEIGHT_DECAY, LEARNING_RATE = 0.1, 0.5


def _network(seed):
    """1x1 conv (no bias) to 2 channels, the tap; its global average -> dense to 3."""
    decay = keras.regularizers.L2(WEIGHT_DECAY / 2)
    initializer = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    inputs = keras.Input((2, 2, 1))
    tap = keras.layers.Conv2D(2, 1, use_bias=False, kernel_regularizer=decay,
                              kernel_initializer=initializer)(inputs)
    logits = keras.layers.Dense(3, kernel_regularizer=decay, kernel_initializer=initializer)(
        keras.layers.GlobalAveragePooling2D()(tap))
    return keras.Model(inputs, {"logits": logits, "features": [tap]})


def test_ab_stages_train_student_and_connectors_on_ab_then_the_task_alone():
    """Plain SGD, one step an epoch: in the initialisation the student's conv and the
    connector move on AB (+ their weight decay), the classifier, which AB does not reach,
    does not; in the main stage the classifier trains on the task and the connector,
    which the task does not reach, moves by its weight decay (5e-4) alone, as the authors'
    main train op descends CE + every regularisation loss over every variable."""
    rng = np.random.default_rng(3)
    images = rng.normal(size=(4, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    student, teacher = _network(1), _network(2)
    distiller = Distiller(teacher, student, losses.ABDistillation(init_epochs=1))
    distiller.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    conv, kernel, bias = student.weights
    snapshots = []

    def snapshot(*_):
        connector = distiller.method.connectors[0]
        snapshots.append({"conv": conv.numpy().copy(), "kernel": kernel.numpy().copy(),
                          "bias": bias.numpy().copy(),
                          **{w.path: w.numpy().copy() for w in connector.trainable_weights}})

    record = keras.callbacks.LambdaCallback(on_train_begin=snapshot, on_epoch_end=snapshot)
    history = distiller.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=2,
                            callbacks=[record], verbose=0)
    start, after_init, after_main = snapshots
    connector_weights = [name for name in start if "ab_connector0/" in name]
    assert len(connector_weights) == 3
    for name in ["conv"] + connector_weights:
        assert not np.allclose(start[name], after_init[name]), name
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(start[name], after_init[name])
        assert not np.allclose(after_init[name], after_main[name]), name
    for name in connector_weights:
        np.testing.assert_allclose(after_main[name],
                                   after_init[name] * (1 - LEARNING_RATE * 5e-4), rtol=1e-6)
    assert distiller.stage.name == "main"
    assert history.history["ab_loss"][0] > 0


def test_co_prepares_its_margins_from_the_teacher_and_matches_the_transcription():
    rng = np.random.default_rng(4)
    with float64_layers():
        teacher = pre_activation_network(5, [shape[-1] for shape in TEACHER_TAPS], stddev=0.5)
    batch_norms = [layer for layer in teacher.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    randomise_affine_weights(batch_norms, rng)
    teachers = [t.numpy() for t in teacher(rng.normal(size=(4, 8, 8, 3)),
                                           training=True)["features"]]
    students = [rng.normal(size=t.shape[:3] + (w,)) for t, w in zip(teachers, STUDENT_WIDTHS)]
    method = built_method(losses.CODistillation, students, teachers)
    assert method.recipe == "kd_tf2" and method.gradient_rule == "sum"
    # A loss of a LossSet sees some taps only: its prepare finds their batch norms.
    assert tap_batch_norms(_TapSelection(teacher, (2, 0))) == [batch_norms[2], batch_norms[0]]
    method.prepare(teacher, None)
    margins = [reference_margin(layer.gamma.numpy(), layer.beta.numpy()) for layer in batch_norms]
    assert [w.path for w in method.non_trainable_weights if "margin" in w.path] == [
        f"co/margin{tap}" for tap in range(3)]
    for weight, margin in zip(method.margins, margins):
        assert not weight.trainable
        np.testing.assert_allclose(weight.numpy(), margin, rtol=1e-6)
    expected = sum(1e-3 / 4 / 2.0 ** (2 - tap) * co_tap_loss(
        co_connected(s, trainable_arrays(c)), t, m)
        for tap, (s, t, c, m) in enumerate(zip(students, teachers, method.connectors, margins)))
    terms = method(outputs(students), outputs(teachers), None, training=True)
    assert set(terms) == {"co"}
    np.testing.assert_allclose(total(terms), expected, rtol=1e-6)


def test_co_needs_pre_relu_batch_norm_taps_and_its_prepare():
    post_relu = keras.Model(*(lambda x: (x, {"logits": keras.layers.Dense(5)(
        keras.layers.GlobalAveragePooling2D()(x)), "features": [keras.layers.ReLU()(
            keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 1)(x)))]}))(
        keras.Input((4, 4, 3))))
    method = losses.CODistillation().method
    with pytest.raises(UserError, match="not the output of a batch-norm layer") as error:
        method.prepare(post_relu, None)
    assert "\n" not in str(error.value)
    maps = [np.zeros((2, 4, 4, 4))]
    with pytest.raises(UserError, match="call prepare"):
        method(outputs(maps), outputs(maps), None, training=True)


@pytest.mark.parametrize("name, defaults", [
    ("rkd", {"distance_weight": 25.0, "angle_weight": 50.0}),
    ("vid", {"weight": 1.0}),
    ("ab", {"weight": 3e-3, "margin": 1.0}),
    ("co", {"weight": 1e-3}),
])
def test_search_spaces_default_to_the_authors_weights(name, defaults):
    space = METHODS.get(name).search_space(keras_tuner.HyperParameters())
    assert space == pytest.approx(defaults)
