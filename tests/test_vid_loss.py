"""VID (sskd_tf/distill/vid.py) against a NumPy float64 transcription of
KD_methods_with_TF `nets/Multiple.py: VID` at commit 9fb5414, on the ResNet8/32 taps."""
import numpy as np
import pytest
import tensorflow as tf

from relational_reference import (assert_he_initialised, assert_tap_gradients, assert_weight_decay,
                          batch_norm, conv1x1, loss_and_gradients, post_relu_taps,
                          random_float64_layers, trainable_arrays)
from sskd_tf.distill.vid import build_vid_regressors, vid_loss
from sskd_tf.errors import UserError

AUTHORS_TAPS = [(4, 32, 32, 64), (4, 16, 16, 128), (4, 8, 8, 256)]
SMALL_TAPS = [(4, 8, 8, 32), (4, 4, 4, 64), (4, 2, 2, 128)]
KERNELS_AND_ALPHA = ("alpha", "fc0/kernel", "fc1/kernel", "fc2/kernel")
EVERY_WEIGHT = KERNELS_AND_ALPHA + tuple(f"bn{i}/{name}" for i in range(3)
                                         for name in ("gamma", "beta"))
WEIGHT_DECAY = 5e-4


def reference_mean(student, kernels, gammas, betas, relu_masks=None):
    """(mu, the ReLUs' masks): mu = BN(fc(relu(BN(fc(relu(BN(fc(s)))))))), per pixel.
    Given `relu_masks`, each ReLU multiplies by its mask instead: the same function
    on the linear piece of the base point, which finite differences can follow
    without crossing a kink."""
    hidden, masks = batch_norm(conv1x1(student, kernels[0]), gammas[0], betas[0]), []
    for layer in (1, 2):
        mask = hidden > 0 if relu_masks is None else relu_masks[layer - 1]
        masks.append(mask)
        hidden = batch_norm(conv1x1(hidden * mask, kernels[layer]), gammas[layer], betas[layer])
    return hidden, masks


def reference_tap_loss(student, teacher, kernels, gammas, betas, alpha, relu_masks=None):
    variance = np.log1p(np.exp(alpha)) + 1.0
    mean, _ = reference_mean(student, kernels, gammas, betas, relu_masks)
    return np.mean(np.log(variance) + (teacher - mean) ** 2 / variance) / 2


def reference_arguments(weights):
    """(kernels, gammas, betas, alpha) of a regressor's {name: array}."""
    return ([weights[f"fc{i}/kernel"] for i in range(3)],
            [weights[f"bn{i}/gamma"] for i in range(3)],
            [weights[f"bn{i}/beta"] for i in range(3)], weights["alpha"])


@pytest.mark.parametrize("teacher_shapes, student_widths, checked_weights, directions", [
    (AUTHORS_TAPS, (64, 128, 256), KERNELS_AND_ALPHA, 1),
    (SMALL_TAPS, (16, 32, 64), EVERY_WEIGHT, 2),
])
def test_loss_and_gradients_match_the_transcription(teacher_shapes, student_widths,
                                                    checked_weights, directions):
    """On the authors' taps (the student as wide as the teacher) the gradients of the
    student's maps, the kernels and alpha; on smaller taps, with a student half as
    wide, those of every weight."""
    rng = np.random.default_rng(0)
    student_shapes, students, teachers = post_relu_taps(teacher_shapes, student_widths, rng)
    regressors = random_float64_layers(build_vid_regressors, student_shapes, teacher_shapes,
                                       WEIGHT_DECAY, rng)
    loss, student_gradients, weight_gradients = loss_and_gradients(
        lambda s, t: vid_loss(s, t, regressors), students, teachers, regressors)

    expected = 0.0
    for tap, (student, teacher, regressor) in enumerate(zip(students, teachers, regressors)):
        weights = trainable_arrays(regressor)
        expected += reference_tap_loss(student, teacher, *reference_arguments(weights))
        _, masks = reference_mean(student, *reference_arguments(weights)[:3])

        def tap_loss(x, weights, teacher=teacher, masks=masks):
            return reference_tap_loss(x, teacher, *reference_arguments(weights), masks)

        assert_tap_gradients(tap_loss, student, weights, student_gradients[tap],
                             weight_gradients[tap], rng, checked_weights, directions)
    np.testing.assert_allclose(loss, expected, rtol=1e-10)


def test_layers_names_fan_out_initialiser_initial_variance_and_weight_decay():
    regressor = build_vid_regressors([(None, 4, 4, 64)], [(None, 4, 4, 128)], WEIGHT_DECAY)[0]
    assert [weight.path for weight in regressor.trainable_weights] == [
        "vid0/alpha", "vid0/fc0/kernel", "vid0/bn0/gamma", "vid0/bn0/beta", "vid0/fc1/kernel",
        "vid0/bn1/gamma", "vid0/bn1/beta", "vid0/fc2/kernel", "vid0/bn2/gamma", "vid0/bn2/beta"]
    kernels = [dense.kernel.numpy() for dense in regressor.dense_layers]
    assert [kernel.shape for kernel in kernels] == [(64, 256), (256, 256), (256, 128)]
    assert_he_initialised(kernels[0], fan=256)
    assert_he_initialised(kernels[2], fan=128)
    np.testing.assert_allclose(regressor.variance().numpy(), np.log1p(np.exp(5.0)) + 1.0, rtol=1e-6)
    assert_weight_decay(regressor, WEIGHT_DECAY, [
        weight for weight in regressor.trainable_weights if not weight.path.endswith("alpha")])


@pytest.mark.parametrize("student_shapes, teacher_shapes, message", [
    ([(4, 8, 8, 16)], [(4, 8, 8, 16), (4, 4, 4, 32)], "1 taps and the teacher 2"),
    ([(4, 8, 8, 16)], [(4, 4, 4, 16)], "tap 0: .* differ in batch and spatial size"),
])
def test_incompatible_taps_are_user_errors(student_shapes, teacher_shapes, message):
    with pytest.raises(UserError, match=message):
        build_vid_regressors(student_shapes, teacher_shapes)


def test_loss_rejects_taps_the_regressors_were_not_built_for():
    regressors = build_vid_regressors([(4, 8, 8, 16)], [(4, 8, 8, 16)])
    with pytest.raises(UserError, match="differ in shape"):
        vid_loss([tf.zeros((4, 8, 8, 16))], [tf.zeros((4, 8, 8, 32))], regressors)
