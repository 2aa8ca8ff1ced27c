"""Epoch bookkeeping and learning rate of KD_methods_with_TF `train_w_distill.py`.

The authors draw batches from one continuous shuffled stream and call
floor(step * B / N) the epoch: the number of passes over the training set.
Our pipeline makes each Keras epoch one pass of ceil(N / B) steps (the last
batch partial), so the same quantity is step // steps_per_epoch.
"""
import math

import keras
import tensorflow as tf


def steps_per_epoch(batch_size, num_train):
    """Steps of one pass over the training set: ceil(N / B)."""
    return math.ceil(num_train / batch_size)


def epoch_of_step(step, steps_in_epoch):
    """The 0-based epoch (pass) of a global step, as a float tensor."""
    return tf.cast(tf.math.floordiv(step, steps_in_epoch), tf.float32)


def clip_sigmoid(epoch):
    """sigmoid(epoch), taken as exactly 1 once above 1 - 1e-8 (op_util.py `sigmoid`)."""
    value = tf.sigmoid(tf.cast(epoch, tf.float32))
    return tf.where(value > 1.0 - 1e-8, tf.ones_like(value), value)


def decay_epochs(epochs, decay_points, init_epochs=0):
    """Epochs at which the learning rate decays: init_epochs + int(epochs * p)."""
    return [init_epochs + int(epochs * point) for point in decay_points]


def learning_rate_schedule(learning_rate, decay_points, decay_rate, epochs, steps_in_epoch,
                           init_epochs=0):
    """Piecewise-constant learning rate: x decay_rate from the first step of each
    decay epoch on."""
    boundaries = [e * steps_in_epoch - 1 for e in decay_epochs(epochs, decay_points, init_epochs)]
    values = [learning_rate * decay_rate ** i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
