"""AB (sskd_tf/distill/ab.py) against a NumPy float64 transcription of KD_methods_with_TF
`nets/Multiple.py: AB_distillation` at commit 9fb5414, as `nets/ResNet.py` calls it
(margin 1, weight 3e-3), on the ResNet8/32 taps."""
import numpy as np
import pytest
import tensorflow as tf

from relational_reference import (assert_he_initialised, assert_tap_gradients, assert_weight_decay,
                          batch_norm, conv1x1, loss_and_gradients, post_relu_taps,
                          random_float64_layers, trainable_arrays)
from sskd_tf.distill.ab import ab_loss, build_ab_connectors
from sskd_tf.errors import UserError

AUTHORS_TAPS = [(4, 32, 32, 64), (4, 16, 16, 128), (4, 8, 8, 256)]
WEIGHT_DECAY = 5e-4
CONNECTOR_WEIGHTS = ("conv/kernel", "bn/gamma", "bn/beta")


def reference_connected(student, weights):
    return batch_norm(conv1x1(student, weights["conv/kernel"]), weights["bn/gamma"],
                      weights["bn/beta"])


def reference_tap_loss(connected, teacher, margin=1.0):
    """mean_b sum_hwc [(z + m)^2 1(z > -m, t <= 0) + (z - m)^2 1(z <= m, t > 0)]."""
    inactive = teacher <= 0
    hinge = np.where(inactive & (connected > -margin), (connected + margin) ** 2, 0.0)
    hinge += np.where(~inactive & (connected <= margin), (connected - margin) ** 2, 0.0)
    return hinge.sum(axis=(1, 2, 3)).mean()


def tap_weight(tap):
    return (1.0, 2.0, 4.0)[tap] * 3e-3


@pytest.mark.parametrize("student_widths", [(64, 128, 256), (32, 64, 128)])
def test_loss_and_gradients_match_the_transcription(student_widths):
    rng = np.random.default_rng(1)
    student_shapes, students, teachers = post_relu_taps(AUTHORS_TAPS, student_widths, rng)
    connectors = random_float64_layers(build_ab_connectors, student_shapes, AUTHORS_TAPS,
                                       WEIGHT_DECAY, rng)
    loss, student_gradients, weight_gradients = loss_and_gradients(
        lambda s, t: ab_loss(s, t, connectors), students, teachers, connectors)

    expected = 0.0
    for tap, (student, teacher, connector) in enumerate(zip(students, teachers, connectors)):
        weights = trainable_arrays(connector)
        connected = reference_connected(student, weights)
        inactive = teacher <= 0
        assert np.any(inactive & (connected > -1)) and np.any(inactive & (connected <= -1))
        assert np.any(~inactive & (connected <= 1)) and np.any(~inactive & (connected > 1))
        expected += tap_weight(tap) * reference_tap_loss(connected, teacher)

        def tap_loss(x, weights, tap=tap, teacher=teacher):
            return tap_weight(tap) * reference_tap_loss(reference_connected(x, weights), teacher)

        assert_tap_gradients(tap_loss, student, weights, student_gradients[tap],
                             weight_gradients[tap], rng, CONNECTOR_WEIGHTS)
    np.testing.assert_allclose(loss, expected, rtol=1e-10)


def test_connector_names_fan_out_initialiser_and_weight_decay():
    connector = build_ab_connectors([(None, 4, 4, 256)], [(None, 4, 4, 128)], WEIGHT_DECAY)[0]
    assert [weight.path for weight in connector.trainable_weights] == [
        "ab_connector0/conv/kernel", "ab_connector0/bn/gamma", "ab_connector0/bn/beta"]
    assert tuple(connector.conv.kernel.shape) == (1, 1, 256, 128)
    assert_he_initialised(connector.conv.kernel.numpy(), fan=128)
    assert_weight_decay(connector, WEIGHT_DECAY, connector.trainable_weights)


def test_incompatible_taps_are_user_errors():
    with pytest.raises(UserError, match="tap 1: .* differ in batch and spatial size"):
        build_ab_connectors([(4, 8, 8, 16), (4, 8, 8, 32)], [(4, 8, 8, 16), (4, 4, 4, 32)])
    connectors = build_ab_connectors([(4, 8, 8, 16)], [(4, 8, 8, 16)])
    with pytest.raises(UserError, match="differ in shape"):
        ab_loss([tf.zeros((4, 8, 8, 16))], [tf.zeros((4, 8, 8, 32))], connectors)
