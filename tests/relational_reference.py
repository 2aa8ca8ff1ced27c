"""NumPy float64 pieces for the tests of the RKD, VID, AB and CO losses, which transcribe
the authors' formulas independently of sskd_tf: batch norm on the batch's statistics,
a 1x1 convolution, gradients by central finite differences; and the TensorFlow side's
loss and gradients to compare them with."""
import contextlib

import keras
import numpy as np
import tensorflow as tf
# scikit-learn's dependency: one BLAS thread beside TensorFlow's runs the many small
# products of the finite differences several times faster on a busy machine.
from threadpoolctl import threadpool_limits

BN_EPSILON = 1e-5


@contextlib.contextmanager
def float64_layers():
    """Layers built inside compute and keep their weights in float64. (The global dtype
    policy, not floatx: the policy is cached from floatx on its first use and would keep
    float64 for every later layer.)"""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def randomise_affine_weights(layers, rng):
    """Draw every BN gamma (around 1), beta and VID alpha (around 0) of `layers` at
    random: their initial values 1, 0 and 5 would hide a misuse."""
    for layer in layers:
        for weight in layer.trainable_weights:
            name = weight.path.rsplit("/", 1)[1]
            if name in ("gamma", "beta", "alpha"):
                weight.assign(rng.normal(1.0 if name == "gamma" else 0.0, 0.5, weight.shape))


def random_float64_layers(build, student_shapes, teacher_shapes, weight_decay, rng):
    """`build(student_shapes, teacher_shapes, weight_decay)`'s per-tap layers in float64,
    their affine weights drawn at random."""
    with float64_layers():
        layers = build(student_shapes, teacher_shapes, weight_decay)
    randomise_affine_weights(layers, rng)
    return layers


def post_relu_taps(teacher_shapes, student_widths, rng):
    """(student shapes, student maps, teacher maps): random post-ReLU maps of the teacher's
    shapes and of the same sizes at the student's widths."""
    student_shapes = [shape[:3] + (width,) for shape, width in zip(teacher_shapes, student_widths)]
    students, teachers = ([np.maximum(rng.normal(size=shape), 0.0) for shape in shapes]
                          for shapes in (student_shapes, teacher_shapes))
    return student_shapes, students, teachers


def trainable_arrays(layer):
    """{path below the layer: array} of the layer's trainable weights, e.g. "bn/gamma"."""
    return {weight.path.split("/", 1)[1]: weight.numpy() for weight in layer.trainable_weights}


def assert_he_initialised(kernel, fan):
    """The spread of a kernel drawn by He's truncated normal on `fan` inputs or outputs:
    standard deviation sqrt(2 / fan), to 5% (the kernels tested have 16k entries or more)."""
    kernel = np.asarray(kernel)
    assert kernel.size >= 16384
    assert abs(kernel.std() / np.sqrt(2.0 / fan) - 1.0) < 0.05, (kernel.std(), np.sqrt(2.0 / fan))


def assert_weight_decay(layer, weight_decay, decayed):
    """The layer's regularisation losses are the authors' weight_decay * sum(w^2) / 2 over
    the weights `decayed`, and over no other."""
    squares = sum(np.sum(np.asarray(weight, np.float64) ** 2) for weight in decayed)
    np.testing.assert_allclose(float(sum(layer.losses)), weight_decay / 2 * squares, rtol=1e-5)


def batch_norm(x, gamma, beta, epsilon=BN_EPSILON):
    """Training-mode BN over every axis but the last, with the biased variance."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    variance = ((x - mean) ** 2).mean(axis=axes)
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def conv1x1(x, kernel):
    """[B, H, W, C_in] x [1, 1, C_in, C_out] (or [C_in, C_out]), as one 2-D product."""
    kernel = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
    return (x.reshape(-1, x.shape[-1]) @ kernel).reshape(x.shape[:-1] + (kernel.shape[-1],))


def numeric_gradient(function, x, step=1e-6):
    """Central finite differences of the scalar `function` at every entry of `x`."""
    gradient = np.zeros_like(x)
    with threadpool_limits(limits=1, user_api="blas"):
        for index in np.ndindex(x.shape):
            shifted = x.copy()
            shifted[index] += step
            upper = function(shifted)
            shifted[index] -= 2 * step
            gradient[index] = (upper - function(shifted)) / (2 * step)
    return gradient


def assert_directional_derivatives(function, x, gradient, rng, directions=2, step=1e-4):
    """<gradient, d> against the central difference of `function` along random unit
    directions d; a gradient with errors on any sizeable part of its entries fails."""
    scale = np.linalg.norm(gradient)
    assert scale > 0
    for _ in range(directions):
        direction = rng.normal(size=x.shape)
        direction /= np.linalg.norm(direction)
        with threadpool_limits(limits=1, user_api="blas"):
            numeric = (function(x + step * direction) - function(x - step * direction)) / (2 * step)
        analytic = np.sum(gradient * direction)
        assert abs(numeric - analytic) <= 1e-5 * abs(analytic) + 1e-7 * scale, (numeric, analytic)


def loss_and_gradients(loss_of, students, teachers, layers):
    """(loss, [gradient of each student map], [{weight name: gradient} of each layer]) of
    `loss_of(student tensors, teacher tensors)` on float64 arrays; the teacher maps are
    checked to get no gradient."""
    student_tensors = [tf.constant(student) for student in students]
    teacher_tensors = [tf.constant(teacher) for teacher in teachers]
    variables = [{weight.path.split("/", 1)[1]: weight for weight in layer.trainable_weights}
                 for layer in layers]
    with tf.GradientTape() as tape:
        tape.watch(student_tensors + teacher_tensors)
        loss = loss_of(student_tensors, teacher_tensors)
    of_students, of_teachers, of_weights = tape.gradient(
        loss, [student_tensors, teacher_tensors, variables])
    assert all(gradient is None for gradient in of_teachers)
    return (loss.numpy(), [gradient.numpy() for gradient in of_students],
            [{name: gradient.numpy() for name, gradient in layer.items()} for layer in of_weights])


def assert_tap_gradients(tap_loss, student, weights, student_gradient, weight_gradients, rng,
                         names, directions=2):
    """Directional derivatives of `tap_loss(student map, {weight name: array})` with respect
    to the student map and to each weight in `names`, against the given gradients."""
    assert_directional_derivatives(lambda x: tap_loss(x, weights), student, student_gradient,
                                   rng, directions)
    for name in names:
        assert_directional_derivatives(lambda value: tap_loss(student, {**weights, name: value}),
                                       weights[name], weight_gradients[name], rng, directions)
