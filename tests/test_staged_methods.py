"""The stages of FT, MHGD and DML through the Distiller's traced step, in-process on toy
networks with batch norm: which variables each stage (each update) changes, and the update
of the main stages against one composed here from the gradients of the same losses.

- FT: the paraphraser alone on its reconstruction, then the student and the translator on
  CE + weight decay + 500 FT by the sum rule, the paraphraser frozen.
- MHGD: the attention network alone on its estimation loss, then the student alone by the
  clip rule with the sigmoid of the epoch within the stage (0.5 in its first epoch), the
  attention network (weights and BN statistics) frozen.
- DML: the student's update, then the peer's on the second view against the updated
  student; the step counted once; the peer's BN statistics frozen unless
  `peer_batch_norm="training"`; the peer's weights and optimizer slots checkpointed.
"""
import keras
import numpy as np
import tensorflow as tf

from sskd_tf import losses
from sskd_tf.distill.dml import mutual_learning_loss
from sskd_tf.training.callbacks import RunCheckpoint
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.schedule import EpochCut

LEARNING_RATE = 0.1
WEIGHT_DECAY = 5e-3


def _toy(seed, widths=(4, 8, 8)):
    """8x8x3 images -> taps 8x8x4 (tall: HW > D), 4x4x8 (tall), 2x2x8 (wide: HW < D) of
    `widths`, the first two after batch norm; logits of 5 classes; L2-decayed kernels."""
    initializer = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    decay = keras.regularizers.L2(WEIGHT_DECAY / 2)
    x = inputs = keras.Input((8, 8, 3))
    taps = []
    for index, (width, stride) in enumerate(zip(widths, (1, 2, 2))):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                                kernel_initializer=initializer, kernel_regularizer=decay)(x)
        if index < 2:
            x = keras.layers.BatchNormalization(momentum=0.5)(x)
        x = keras.layers.ReLU()(x)
        taps.append(x)
    logits = keras.layers.Dense(5, kernel_initializer=initializer, kernel_regularizer=decay)(
        keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, {"logits": logits, "features": taps})


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(size=(6, 8, 8, 3)), tf.float32)
    return images, tf.constant(rng.integers(0, 5, size=6))


def _distiller(teacher, student, loss, optimizer=None):
    distiller = Distiller(teacher, student, loss, steps_in_epoch=1)
    distiller.build((None, 8, 8, 3))
    distiller.compile(optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE))
    distiller.optimizer.build(distiller.trainable_variables)
    return distiller


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables):
    """Per variable: whether it moved."""
    return [not np.array_equal(a, v.numpy()) for a, v in zip(before, variables)]


def _step(distiller, batch, labels):
    """One traced step in the stage of the optimizer's step count (an epoch a step)."""
    distiller.select_stage(int(distiller.optimizer.iterations.numpy()))
    return tf.function(distiller.train_step)((batch, labels))


def _gradients(loss_fn, variables, restore):
    """The gradients of `loss_fn()` with respect to `variables`, the values of `restore`
    (BN statistics the forward pass moves) put back after it."""
    kept = _values(restore)
    with tf.GradientTape(persistent=True) as tape:
        parts = loss_fn()
    grads = [tape.gradient(part, variables) for part in parts]
    for variable, value in zip(restore, kept):
        variable.assign(value)
    return grads


def _cross_entropy(labels, logits):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                       from_logits=True))


def _assert_moved_by(variables, before, gradients):
    for variable, value, gradient in zip(variables, before, gradients):
        expected = value if gradient is None else value - LEARNING_RATE * gradient.numpy()
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)


def test_ft_trains_the_paraphraser_first_then_the_student_and_translator():
    # A teacher map of 32 channels: factors of 32 / 8 = 4 channels (a factor of one channel,
    # x / |x|, has no gradient, so the translator would move by its weight decay alone).
    student, teacher = _toy(1), _toy(2, widths=(4, 8, 32))
    loss = losses.FTDistillation(init_epochs=1)
    distiller = _distiller(teacher, student, loss)
    method = loss.method
    images, labels = _batch()
    groups = {"student": student.weights, "teacher": teacher.weights,
              "paraphraser": method.paraphraser.weights, "translator": method.translator.weights}

    before = {name: _values(weights) for name, weights in groups.items()}
    logs = _step(distiller, images, labels)
    assert distiller.stage.name == "paraphraser"
    moved = {name: _changed(before[name], weights) for name, weights in groups.items()}
    assert all(moved["paraphraser"]) and not any(moved["translator"])
    assert not any(moved["student"]) and not any(moved["teacher"])
    assert float(logs["reconstruction_loss"]) > 0 and float(logs["paraphraser_decay_loss"]) > 0

    trained = student.trainable_variables + method.trainable_variables
    before = {name: _values(weights) for name, weights in groups.items()}
    trained_before = _values(trained)

    def main_loss():
        student_out = student(images, training=True)
        terms = method(student_out, teacher(images, training=False), labels)
        wd = tf.add_n(student.losses + method.losses)
        return [_cross_entropy(labels, student_out["logits"]) + wd + terms["factor_transfer"]]

    [expected] = _gradients(main_loss, trained, student.non_trainable_variables)
    logs = _step(distiller, images, labels)
    assert distiller.stage.name == "main" and float(logs["factor_transfer_loss"]) > 0
    moved = {name: _changed(before[name], weights) for name, weights in groups.items()}
    assert not any(moved["paraphraser"]) and not any(moved["teacher"])
    assert all(moved["translator"]) and any(moved["student"])
    _assert_moved_by(trained, trained_before, expected)
    assert int(distiller.optimizer.iterations.numpy()) == 2


def test_mhgd_trains_the_attention_first_then_the_student_by_the_clip_of_its_stage_epoch():
    student, teacher = _toy(3), _toy(4)
    loss = losses.MHGDDistillation(init_epochs=1, weight=100.0)
    distiller = _distiller(teacher, student, loss)
    method = loss.method
    images, labels = _batch(1)
    groups = {"student": student.weights, "teacher": teacher.weights,
              "graph": method.graph.trainable_weights,
              "graph_statistics": [w for w in method.graph.non_trainable_weights
                                   if "moving" in w.path]}

    before = {name: _values(weights) for name, weights in groups.items()}
    logs = _step(distiller, images, labels)
    assert distiller.stage.name == "attention"
    moved = {name: _changed(before[name], weights) for name, weights in groups.items()}
    assert any(moved["graph"]) and all(moved["graph_statistics"])
    assert not any(moved["student"]) and not any(moved["teacher"])
    assert float(logs["estimation_loss"]) > 0

    variables = student.trainable_variables
    before = {name: _values(weights) for name, weights in groups.items()}
    student_before = _values(variables)

    def parts():
        student_out = student(images, training=True)
        terms = method(student_out, teacher(images, training=False), labels)
        return [_cross_entropy(labels, student_out["logits"]), tf.add_n(student.losses),
                terms["mhgd"]]

    g_ce, g_wd, g_kd = _gradients(parts, variables, student.non_trainable_variables)
    # The clip: per variable, g_kd bounded by ||g_ce|| sigmoid(epoch - init_epochs) = 0.5 ||g_ce||.
    expected = [ce + (0.0 if wd is None else wd)
                + (0.0 if kd is None else tf.clip_by_norm(kd, 0.5 * tf.norm(ce)))
                for ce, wd, kd in zip(g_ce, g_wd, g_kd)]
    assert any(kd is not None and float(tf.norm(kd)) > 0.5 * float(tf.norm(ce))
               for ce, kd in zip(g_ce, g_kd))
    logs = _step(distiller, images, labels)
    assert distiller.stage.name == "main" and float(logs["clip_ratio"]) < 1
    moved = {name: _changed(before[name], weights) for name, weights in groups.items()}
    assert not any(moved["graph"]) and not any(moved["graph_statistics"])
    assert not any(moved["teacher"]) and any(moved["student"])
    _assert_moved_by(variables, student_before, expected)


def _dml_step_by_hand(student, peer, views, labels, peer_training):
    """The authors' DML step on copies: the student on CE + wd + DML against the peer's
    logits of view 0, then the peer on its CE + wd + DML against the updated student's
    logits of view 1; each network's BN statistics move in its own update only."""
    def student_loss():
        student_out = student(views[0], training=True)
        peer_logits = peer(views[0], training=peer_training)["logits"]
        return [_cross_entropy(labels, student_out["logits"]) + tf.add_n(student.losses)
                + mutual_learning_loss(student_out["logits"], peer_logits)]

    def peer_loss():
        student_logits = student(views[1], training=True)["logits"]
        peer_logits = peer(views[1], training=peer_training)["logits"]
        return [_cross_entropy(labels, peer_logits) + tf.add_n(peer.losses)
                + mutual_learning_loss(student_logits, peer_logits)]

    student_statistics = _values(student.non_trainable_variables)
    [grads] = _gradients(student_loss, student.trainable_variables, peer.non_trainable_variables)
    for variable, gradient in zip(student.trainable_variables, grads):
        variable.assign_sub(LEARNING_RATE * gradient)
    assert any(_changed(student_statistics, student.non_trainable_variables))
    [grads] = _gradients(peer_loss, peer.trainable_variables, student.non_trainable_variables)
    for variable, gradient in zip(peer.trainable_variables, grads):
        variable.assign_sub(LEARNING_RATE * gradient)


def _copy(network, seed):
    copy = _toy(seed)
    copy.set_weights(network.get_weights())
    return copy


def _dml_check(peer_batch_norm=None):
    """The peer's BN statistics that moved in a step checked against `_dml_step_by_hand`
    (peer_batch_norm None: the method's default)."""
    student, peer = _toy(5), _toy(6)
    reference_student, reference_peer = _copy(student, 7), _copy(peer, 8)
    options = {} if peer_batch_norm is None else {"peer_batch_norm": peer_batch_norm}
    distiller = _distiller(peer, student, losses.DMLDistillation(**options))
    images, labels = _batch(2)
    views = (images, images[::-1] * 0.5 + 0.1)
    peer_statistics = _values(peer.non_trainable_variables)
    logs = _step(distiller, {"images": views[0], "second_view": views[1]}, labels)
    _dml_step_by_hand(reference_student, reference_peer, views, labels,
                      peer_batch_norm == "training")
    for network, reference in ((student, reference_student), (peer, reference_peer)):
        for got, expected in zip(network.weights, reference.weights):  # BN statistics included
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=got.path)
    assert int(distiller.optimizer.iterations.numpy()) == 1
    assert {"dml_loss", "peer_ce_loss", "peer_dml_loss", "teacher_accuracy"} <= set(logs)
    assert float(logs["peer_ce_loss"]) > 0 and float(logs["dml_loss"]) > 0
    return _changed(peer_statistics, peer.non_trainable_variables)


def test_dml_updates_the_student_then_the_peer_its_statistics_frozen_as_the_authors():
    assert not any(_dml_check())  # the default: the authors' peer in inference mode


def test_dml_peer_statistics_move_in_its_own_update_with_the_option():
    assert all(_dml_check("training"))


def test_dml_checkpoints_the_peer_and_its_optimizer_slots(tmp_path):
    """A distiller restored from a checkpoint of another after a step continues as that
    one: the peer's weights, BN statistics and momentum slots come back with the student's."""
    images, labels = _batch(3)
    batch = {"images": images, "second_view": images[::-1]}

    def distiller_of(seed):
        student, peer = _toy(seed), _toy(seed + 1)
        distiller = _distiller(peer, student, losses.DMLDistillation(peer_batch_norm="training"),
                               keras.optimizers.SGD(LEARNING_RATE, momentum=0.9))
        return distiller, student, peer

    first, student, peer = distiller_of(10)
    _step(first, batch, labels)
    saving = RunCheckpoint(str(tmp_path / "a"), first, EpochCut.of_steps(1), epochs=2)
    saving.manager.save()
    second, resumed_student, resumed_peer = distiller_of(20)
    restoring = RunCheckpoint(str(tmp_path / "a"), second, EpochCut.of_steps(1), epochs=2)
    restoring.restore()
    assert int(second.optimizer.iterations.numpy()) == 1
    for got, expected in zip(resumed_peer.weights + resumed_student.weights,
                             peer.weights + student.weights):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    _step(first, batch, labels)
    _step(second, batch, labels)
    for got, expected in zip(resumed_peer.weights, peer.weights):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_the_results_report_the_peer_beside_the_student():
    from sskd_tf.training import run
    from sskd_tf.training.config import RunConfig

    history = [{"epoch": epoch, "val_accuracy": student, "val_teacher_accuracy": peer}
               for epoch, (student, peer) in enumerate([(0.2, 0.3), (0.4, 0.25)])]
    results = run._results(RunConfig(method="dml"), history, 1.0, None, 2)
    assert (results["last_val_accuracy"], results["trained_teacher_last_val_accuracy"],
            results["trained_teacher_best_val_accuracy"]) == (0.4, 0.25, 0.3)
    assert "trained teacher best val accuracy | 30.00%" in run.format_results(results)
    plain = run._results(RunConfig(method="ft"), [{"epoch": 0, "val_accuracy": 0.2}], 1.0, 0.5, 1)
    assert plain["trained_teacher_last_val_accuracy"] is None
    assert "trained teacher" not in run.format_results(plain)
