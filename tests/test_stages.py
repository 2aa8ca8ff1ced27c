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
from sskd_tf.distill.stages import Stage, StagePlan
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
    assert (init.name, init.epochs, init.task, init.distillation) == ("init", 40, False, "call")
    assert (main.name, main.task, main.distillation) == ("main", True, None)
    assert len(build_method("fsp", normalisation="eccv2018").stages()) == 1
    assert len(build_method("fitnet", init_epochs=0).stages()) == 1


def test_a_plan_counts_the_stages_before_the_main_one_on_top_of_the_run():
    plan = StagePlan((Stage("helper", epochs=3, trains=("method",), task=False,
                            reads_student=False),
                      Stage("init", epochs=2, task=False), Stage()))
    assert plan.offset == 5 and plan.total_epochs(10) == 15
    assert [plan.at(epoch)[1].name for epoch in (0, 2, 3, 4, 5, 99)] == [
        "helper", "helper", "init", "init", "main", "main"]
    assert plan.first_epoch(plan.stages[-1]) == 5
    assert plan.trains("method") and not plan.trains("teacher")
    with pytest.raises(ValueError, match="main stage last"):
        StagePlan((Stage(), Stage("init", epochs=2, task=False)))
    with pytest.raises(ValueError, match="needs its own"):
        Stage("init")
