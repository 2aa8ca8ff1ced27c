"""CO (sskd_tf/distill/co.py) against a NumPy/SciPy float64 transcription of
Knowledge_distillation_via_TF2.0 `distiller/CO.py`, on taps of the authors' sizes."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from relational_reference import (assert_he_initialised, assert_tap_gradients, assert_weight_decay,
                          batch_norm, conv1x1, loss_and_gradients, random_float64_layers,
                          randomise_affine_weights, trainable_arrays)
from sskd_tf.distill.co import (build_co_connectors, overhaul_loss, overhaul_margin,
                                tap_batch_norms, teacher_margins)
from sskd_tf.errors import UserError
from sskd_tf.models import build_model

TAPS = [(4, 32, 32, 64), (4, 16, 16, 128), (4, 8, 8, 256)]
WEIGHT_DECAY = 5e-4
CONNECTOR_WEIGHTS = ("conv/kernel", "bn/gamma", "bn/beta")
# beta / |gamma| above 3.09: Phi(-beta/|gamma|) < 1e-3, the margin is -3 |gamma|.
GAMMAS = np.array([1.0, -1.0, 0.5, 2.0, 1.0, -0.3, 0.2, 1.5])
BETAS = np.array([0.0, 0.5, -1.0, 1.0, 3.5, 2.0, 0.6, -4.0])


def reference_margin(gamma, beta):
    """E[x | x < 0] for x ~ N(beta, gamma^2) by SciPy's truncated normal where
    P(x < 0) > 1e-3, else -3 |gamma|."""
    scale = np.abs(gamma)
    below_zero = stats.norm.cdf(-beta / scale)
    truncated_mean = stats.truncnorm.mean(-np.inf, -beta / scale, loc=beta, scale=scale)
    return np.where(below_zero > 1e-3, truncated_mean, -3 * scale)


def test_margin_matches_the_truncated_normal_mean_on_both_branches():
    tail = stats.norm.cdf(-BETAS / np.abs(GAMMAS))
    assert np.any(tail > 1e-3) and np.any(tail <= 1e-3)
    margin = overhaul_margin(GAMMAS, BETAS)
    assert margin.dtype == tf.float64
    np.testing.assert_allclose(margin.numpy(), reference_margin(GAMMAS, BETAS), rtol=1e-10)
    single = overhaul_margin(tf.constant(GAMMAS, tf.float32), tf.constant(BETAS, tf.float32))
    assert single.dtype == tf.float32
    np.testing.assert_allclose(single.numpy(), reference_margin(GAMMAS, BETAS), rtol=1e-6)


def reference_connected(student, weights):
    return batch_norm(conv1x1(student, weights["conv/kernel"]), weights["bn/gamma"],
                      weights["bn/beta"])


def reference_tap_loss(connected, teacher, margin):
    """sum (z - t)^2 where z > t or t > 0, t = max(teacher, margin)."""
    target = np.maximum(teacher, margin)
    kept = (connected > target) | (target > 0)
    return np.sum(np.where(kept, (connected - target) ** 2, 0.0))


def tap_weight(tap):
    return 1e-3 / 4 * (0.25, 0.5, 1.0)[tap]


def teacher_tap(shape, rng):
    """A pre-activation map N(beta, gamma^2) per channel, gamma and beta cycling through
    GAMMAS and BETAS (both margin branches in every tap), and its margins."""
    gamma = np.resize(GAMMAS, shape[-1]) * rng.uniform(0.8, 1.2, shape[-1])
    beta = np.resize(BETAS, shape[-1]) * rng.uniform(0.8, 1.2, shape[-1])
    return gamma * rng.normal(size=shape) + beta, reference_margin(gamma, beta), (gamma, beta)


def test_loss_and_gradients_match_the_transcription():
    rng = np.random.default_rng(2)
    students = [rng.normal(size=shape[:3] + (shape[-1] // 2,)) for shape in TAPS]
    teachers, margins, affines = zip(*(teacher_tap(shape, rng) for shape in TAPS))
    connectors = random_float64_layers(build_co_connectors, [s.shape for s in students], TAPS,
                                       WEIGHT_DECAY, rng)
    tf_margins = [overhaul_margin(gamma, beta) for gamma, beta in affines]
    loss, student_gradients, weight_gradients = loss_and_gradients(
        lambda s, t: overhaul_loss(s, t, connectors, tf_margins), students, teachers, connectors)

    expected = 0.0
    for tap, (student, teacher, margin, connector) in enumerate(
            zip(students, teachers, margins, connectors)):
        weights = trainable_arrays(connector)
        connected = reference_connected(student, weights)
        negative = teacher <= 0
        assert np.any(negative & (teacher < margin)) and np.any(negative & (teacher > margin))
        target = np.maximum(teacher, margin)
        assert np.any(~negative) and np.any(negative & (connected > target))
        assert np.any(negative & (connected <= target))
        expected += tap_weight(tap) * reference_tap_loss(connected, teacher, margin)

        def tap_loss(x, weights, tap=tap, teacher=teacher, margin=margin):
            connected = reference_connected(x, weights)
            return tap_weight(tap) * reference_tap_loss(connected, teacher, margin)

        assert_tap_gradients(tap_loss, student, weights, student_gradients[tap],
                             weight_gradients[tap], rng, CONNECTOR_WEIGHTS)
    np.testing.assert_allclose(loss, expected, rtol=1e-10)


def test_connector_names_fan_in_initialiser_and_weight_decay():
    connector = build_co_connectors([(None, 8, 8, 256)], [(None, 8, 8, 512)], WEIGHT_DECAY)[0]
    assert [weight.path for weight in connector.trainable_weights] == [
        "co_connector0/conv/kernel", "co_connector0/bn/gamma", "co_connector0/bn/beta"]
    assert tuple(connector.conv.kernel.shape) == (1, 1, 256, 512)
    assert_he_initialised(connector.conv.kernel.numpy(), fan=256)
    assert_weight_decay(connector, WEIGHT_DECAY, connector.trainable_weights)


def test_teacher_margins_read_the_batch_norms_of_a_wrn_s_pre_activation_taps():
    rng = np.random.default_rng(4)
    teacher = build_model("wrn16_1", 10, (8, 8, 3))
    batch_norms = tap_batch_norms(teacher)
    assert [layer.name for layer in batch_norms] == ["stage1_block0_bn", "stage2_block0_bn",
                                                     "final_bn"]
    randomise_affine_weights(batch_norms, rng)
    for margin, layer in zip(teacher_margins(teacher), batch_norms):
        np.testing.assert_allclose(
            margin.numpy(), reference_margin(layer.gamma.numpy(), layer.beta.numpy()), rtol=1e-5)


def test_post_relu_taps_and_mismatched_margins_are_user_errors():
    with pytest.raises(UserError, match="tap 0 of 'resnet8' is not the output of a batch-norm"):
        tap_batch_norms(build_model("resnet8", 10, (8, 8, 3)))
    connectors = build_co_connectors([(4, 8, 8, 16)], [(4, 8, 8, 32)])
    with pytest.raises(UserError, match=r"margins of widths \[16\] for teacher taps of widths"):
        overhaul_loss([tf.zeros((4, 8, 8, 16))], [tf.zeros((4, 8, 8, 32))], connectors,
                      [tf.zeros(16)])


def test_graph_mode_with_an_unknown_batch_divides_by_the_batch_fed():
    rng = np.random.default_rng(5)
    connectors = build_co_connectors([(None, 4, 4, 8)], [(None, 4, 4, 16)])
    margins = [overhaul_margin(np.ones(16, np.float32), np.zeros(16, np.float32))]
    traced = tf.function(lambda s, t: overhaul_loss(s, t, connectors, margins),
                         input_signature=[[tf.TensorSpec([None, 4, 4, 8])],
                                          [tf.TensorSpec([None, 4, 4, 16])]])
    for batch in (2, 6):
        student = rng.normal(size=(batch, 4, 4, 8)).astype(np.float32)
        teacher = rng.normal(size=(batch, 4, 4, 16)).astype(np.float32)
        np.testing.assert_allclose(traced([student], [teacher]).numpy(),
                                   overhaul_loss([student], [teacher], connectors, margins).numpy(),
                                   rtol=1e-5)
