"""FitNet's initialisation stage, both phases, against an update computed by hand in numpy:
KD_methods_with_TF's `Optimizer_w_Initializer` trains the variables the hints reach on the
hint and weight-decay gradients only, then every variable on the task and weight-decay
gradients, with one momentum optimizer whose accumulators carry over."""
import keras
import numpy as np
import tensorflow as tf

from sskd_tf.distill import build_method
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
    distiller = Distiller(student, build_method("fitnet", init_epochs=1), teacher,
                          steps_in_epoch=1)
    distiller.build((None, 2, 2, 1))
    distiller.compile(optimizer=TF1Momentum(LEARNING_RATE, MOMENTUM))
    distiller.optimizer.build(distiller.trainable_variables)

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
    distiller.train_step((tf.constant(images), tf.constant(labels)))
    _assert_student(student, params)

    # Step 1, epoch 1 (training): every variable by the mean cross-entropy and the weight
    # decay, no hint; the conv kernel's accumulator carries over.
    pooled = means[:, None] * params["w"][None, :]
    dz = (_softmax(pooled @ params["kernel"] + params["bias"]) - onehot) / len(labels)
    tf1_momentum({
        "w": (means[:, None] * (dz @ params["kernel"].T)).sum(0) + WEIGHT_DECAY * params["w"],
        "kernel": pooled.T @ dz + WEIGHT_DECAY * params["kernel"],
        "bias": dz.sum(0),
    })
    distiller.train_step((tf.constant(images), tf.constant(labels)))
    _assert_student(student, params)


def _assert_student(student, params):
    conv, dense = (layer for layer in student.layers if layer.weights)
    np.testing.assert_allclose(conv.kernel.numpy().ravel(), params["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dense.kernel.numpy(), params["kernel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dense.bias.numpy(), params["bias"], rtol=1e-5, atol=1e-7)


def test_fsp_trains_by_the_same_stages_as_fitnet():
    fitnet, fsp = build_method("fitnet"), build_method("fsp")
    assert fitnet.init_epochs == fsp.init_epochs == 40
    assert build_method("fsp", normalisation="eccv2018").init_epochs == 0
