"""Training stages (distill/stages.py): the plan's arithmetic, and FitNet's initialisation
stage, both stages through `fit`, against an update computed by hand in numpy:
KD_methods_with_TF's `Optimizer_w_Initializer` trains the variables the hints reach on the
hint and weight-decay gradients only, then every variable on the task and weight-decay
gradients, with one momentum optimizer whose accumulators carry over."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf import losses
from sskd_tf.distill import build_method
from sskd_tf.distill.base import DistillationMethod
from sskd_tf.distill.stages import Stage, StagePlan, Update
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.optimizers import TF1Momentum

WEIGHT_DECAY, LEARNING_RATE, MOMENTUM = 0.1, 0.5, 0.9


def _network(conv_value, dense_kernel, dense_bias):
    """1x1 conv (no bias) to 2 channels -> the tap; global average pool -> dense to 3."""
    decay = keras.regularizers.L2(WEIGHT_DECAY / 2)
    inputs = keras.Input((2, 2, 1))
    tap = keras.layers.Conv2D(2, 1, use_bias=False, kernel_regularizer=decay,
                              kernel_initializer=keras.initializers.Constant(conv_value))(inputs)
    logits = keras.layers.Dense(
        3, kernel_regularizer=decay,
        kernel_initializer=keras.initializers.Constant(dense_kernel),
        bias_initializer=keras.initializers.Constant(dense_bias))(
        keras.layers.GlobalAveragePooling2D()(tap))
    return keras.Model(inputs, {"logits": logits, "features": [tap]})


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_fitnet_stages_step_as_the_authors_update():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    w_s, w_t = np.array([0.3, -0.7]), np.array([1.1, 0.4])
    kernel, bias = rng.normal(size=(2, 3)), np.array([0.1, -0.2, 0.05])
    student = _network(w_s.reshape(1, 1, 1, 2), kernel, bias)
    teacher = _network(w_t.reshape(1, 1, 1, 2), np.zeros((2, 3)), np.zeros(3))
    distiller = Distiller(teacher, student, losses.FitNetDistillation(init_epochs=1))
    distiller.compile(optimizer=TF1Momentum(LEARNING_RATE, MOMENTUM))
    after_epoch = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: after_epoch.append(
        [w.numpy().copy() for w in student.weights]))
    distiller.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=2, callbacks=[record],
                  verbose=0)

    x = images[..., 0].astype(np.float64)
    squares, means = np.sum(x ** 2), x.mean(axis=(1, 2))  # sum over the batch; per image
    count = x.size * 2  # hint elements: B * H * W * D
    onehot = np.eye(3)[labels]
    params = {"w": w_s.copy(), "kernel": kernel.copy(), "bias": bias.copy()}
    accumulators = {name: np.zeros_like(value) for name, value in params.items()}

    def tf1_momentum(gradients):
        for name, gradient in gradients.items():
            accumulators[name] = MOMENTUM * accumulators[name] + gradient
            params[name] = params[name] - LEARNING_RATE * (gradient + MOMENTUM * accumulators[name])

    # Step 0, epoch 0 (initialisation): the conv kernel alone, by the hint's gradient
    # (2 / count) (w_s - w_t) sum(x^2) plus its weight decay wd * w; the dense layer is not
    # reached by the hint and does not move, weight decay included.
    tf1_momentum({"w": 2.0 / count * (params["w"] - w_t) * squares + WEIGHT_DECAY * params["w"]})
    _assert_student(after_epoch[0], params)

    # Step 1, epoch 1 (training): every variable by the mean cross-entropy and the weight
    # decay, no hint; the conv kernel's accumulator carries over.
    pooled = means[:, None] * params["w"][None, :]
    dz = (_softmax(pooled @ params["kernel"] + params["bias"]) - onehot) / len(labels)
    tf1_momentum({
        "w": (means[:, None] * (dz @ params["kernel"].T)).sum(0) + WEIGHT_DECAY * params["w"],
        "kernel": pooled.T @ dz + WEIGHT_DECAY * params["kernel"],
        "bias": dz.sum(0),
    })
    _assert_student(after_epoch[1], params)
    assert distiller.stage.name == "main"


def _assert_student(weights, params):
    conv, kernel, bias = weights
    np.testing.assert_allclose(conv.ravel(), params["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kernel, params["kernel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias, params["bias"], rtol=1e-5, atol=1e-7)


def test_fsp_trains_by_the_same_stages_as_fitnet():
    fitnet, fsp = build_method("fitnet"), build_method("fsp")
    assert fitnet.stages() == fsp.stages()
    init, main = fsp.stages()
    [init_update], [main_update] = init.updates, main.updates
    assert (init.name, init.epochs, init_update.task, init_update.distillation) == (
        "init", 40, False, "call")
    assert (main.name, main_update.task, main_update.distillation) == ("main", True, None)
    assert len(build_method("fsp", normalisation="eccv2018").stages()) == 1
    assert len(build_method("fitnet", init_epochs=0).stages()) == 1


def test_a_plan_counts_the_stages_before_the_main_one_on_top_of_the_run():
    plan = StagePlan((Stage("helper", epochs=3, updates=(Update(
        trains=("method",), task=False, reads_student=False),)),
                      Stage("init", epochs=2, updates=(Update(task=False),)), Stage()))
    assert plan.offset == 5 and plan.total_epochs(10) == 15
    assert [plan.at(epoch)[1].name for epoch in (0, 2, 3, 4, 5, 99)] == [
        "helper", "helper", "init", "init", "main", "main"]
    assert plan.first_epoch(plan.stages[-1]) == 5
    assert plan.trains("method") and not plan.trains("teacher")
    with pytest.raises(ValueError, match="main stage last"):
        StagePlan((Stage(), Stage("init", epochs=2, updates=(Update(task=False),))))
    with pytest.raises(ValueError, match="needs its own"):
        Stage("init")


class _Peer(DistillationMethod):
    """A toy of mutual learning: a peer (a dense layer on the student's pooled tap) that the
    student imitates, trained in a second update of each step on the second view, where it
    also reads the step inputs."""

    step_inputs = ("stage_epoch", "sample_indices")
    needs_teacher = False

    def build(self, student_out_shape):
        self.peer = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(0.1))
        self.peer.build((None, student_out_shape["features"][0][-1]))

    def _peer_logits(self, student_out):
        return self.peer(tf.stop_gradient(tf.reduce_mean(student_out["features"][0], [1, 2])))

    def stages(self):
        return (Stage(updates=(Update(trains=("student",)),
                               Update(trains=("method",), task=False, distillation="peer_terms",
                                      view=1, counts_step=False))),)

    def call(self, student_out, teacher_out, labels, training=False, stage_epoch=None,
             sample_indices=None):
        target = tf.stop_gradient(self._peer_logits(student_out))
        return {"imitation": tf.reduce_mean(tf.square(student_out["logits"] - target))}

    def peer_terms(self, student_out, teacher_out, labels, training=False, stage_epoch=None,
                   sample_indices=None):
        gap = self._peer_logits(student_out) - tf.stop_gradient(student_out["logits"])
        reads = 0.0 * (stage_epoch + tf.cast(tf.reduce_sum(sample_indices), tf.float32))
        return {"peer": tf.reduce_mean(tf.square(gap)) + reads}


def test_a_stage_of_two_updates_counts_one_step_and_freezes_what_it_does_not_train():
    """The second update (the method's, on the second view) moves the method's variables
    only: the optimizer's step count advances once a step, and the student's weights and BN
    statistics after a step are those of its own update alone."""
    from sskd_tf.data.pipeline import full_batch_stream
    from sskd_tf.data.recipes import AUGMENTATIONS
    from sskd_tf.losses import loss_of

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(16, 4, 4, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, size=16)

    def student():
        inputs = keras.Input((4, 4, 3))
        tap = keras.layers.BatchNormalization(momentum=0.5)(keras.layers.Conv2D(
            2, 1, kernel_initializer=keras.initializers.Constant(0.3))(inputs))
        logits = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(0.2))(
            keras.layers.GlobalAveragePooling2D()(tap))
        return keras.Model(inputs, {"logits": logits, "features": [tap]})

    def distiller_of(method):
        net = student()
        distiller = Distiller(None, net, loss_of(method), steps_in_epoch=4)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        return distiller, net

    def stream(method):
        return full_batch_stream(images, labels, 4, AUGMENTATIONS.get("kd_methods"), 0,
                                 inputs=method.batch_inputs())

    peer, alone = _Peer(name="peer"), _Peer(name="peer")
    alone.stages = lambda: (Stage(updates=(Update(trains=("student",)),)),)
    both, net_both = distiller_of(peer)
    single, net_single = distiller_of(alone)
    assert peer.batch_inputs() == ("sample_indices", "second_view")
    both.fit(stream(peer).take(1), epochs=1, verbose=0)
    single.fit(stream(alone).take(1), epochs=1, verbose=0)
    assert int(both.optimizer.iterations.numpy()) == 1
    for a, b in zip(net_both.weights, net_single.weights):  # BN statistics included
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert not np.allclose(peer.peer.kernel.numpy(), 0.1)
    np.testing.assert_allclose(alone.peer.kernel.numpy(), 0.1)
    history = both.fit(stream(peer).skip(1).take(1), epochs=1, verbose=0).history
    assert int(both.optimizer.iterations.numpy()) == 2
    assert history["peer_loss"][0] > 0 and history["imitation_loss"][0] > 0
