"""RKD (sskd_tf/distill/rkd.py) against a NumPy float64 transcription of
KD_methods_with_TF `nets/Relation.py: RKD` at commit 9fb5414, weights 25 and 50."""
import numpy as np
import pytest
import tensorflow as tf

from relational_reference import numeric_gradient
from sskd_tf.distill.rkd import angle_potential, distance_potential, rkd_loss
from sskd_tf.errors import UserError

BATCH = 6


def reference_potentials(embedding):
    """(distance potential [B, B], angle potential [B, B, B]) of row-normalised rows,
    written from pairwise differences: d_ij = sqrt(max(|x_i - x_j|^2, 1e-12)), divided
    by sum(d) / count(d > 0) + 1e-8; A_ijk = e_ij . e_ik, e_ij = (x_j - x_i) / max(|.|, 1e-6)."""
    x = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    differences = x[None, :, :] - x[:, None, :]
    distance = np.sqrt(np.maximum(np.sum(differences ** 2, axis=2), 1e-12))
    mean = distance.sum() / np.count_nonzero(distance > 0) + 1e-8
    lengths = np.linalg.norm(differences, axis=2, keepdims=True)
    directions = differences / np.maximum(lengths, 1e-6)
    return distance / mean, np.einsum("ijd,ikd->ijk", directions, directions)


def reference_huber(a, b):
    d = np.abs(a - b)
    return np.mean(np.where(d <= 1, d ** 2 / 2, d - 0.5))


def reference_rkd(student, teacher):
    student_distance, student_angle = reference_potentials(student)
    teacher_distance, teacher_angle = reference_potentials(teacher)
    return (25 * reference_huber(student_distance, teacher_distance)
            + 50 * reference_huber(student_angle, teacher_angle))


def embeddings():
    """Student rows near a line (angles near +-1), teacher rows a tight cluster and one
    opposite sample (one large distance, angles near +1 at the outlier), so that the
    potentials differ by more than 1 at some entries and by less at others. (The rows
    are normalised: scaling the inputs cannot do it.)"""
    rng = np.random.default_rng(3)
    start, step = rng.normal(size=16), rng.normal(size=16)
    positions = np.array([0.05, -1.0, -0.4, 0.3, 0.7, 1.0])
    student = start + positions[:, None] * step + 0.01 * rng.normal(size=(BATCH, 16))
    centre = np.abs(rng.normal(size=24))
    teacher = centre + 0.05 * rng.normal(size=(BATCH, 24))
    teacher[0] = -centre + 0.05 * rng.normal(size=24)
    return student, teacher


def test_both_huber_branches_are_exercised_by_the_test_inputs():
    student, teacher = embeddings()
    for s, t in zip(reference_potentials(student), reference_potentials(teacher)):
        difference = np.abs(s - t)
        assert np.any(difference <= 1) and np.any(difference > 1)


def test_loss_and_student_gradient_match_the_transcription():
    student, teacher = embeddings()
    student_tensor, teacher_tensor = tf.constant(student), tf.constant(teacher)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([student_tensor, teacher_tensor])
        loss = rkd_loss(student_tensor, teacher_tensor)
    np.testing.assert_allclose(loss.numpy(), reference_rkd(student, teacher), rtol=1e-12)
    expected = numeric_gradient(lambda s: reference_rkd(s, teacher), student)
    np.testing.assert_allclose(tape.gradient(loss, student_tensor).numpy(), expected,
                               rtol=1e-6, atol=1e-8 * np.abs(expected).max())
    assert tape.gradient(loss, teacher_tensor) is None


def test_float32_loss_agrees_with_float64():
    """To 1e-4: in float32 the expanded |x_i|^2 + |x_j|^2 - 2 x_i.x_j leaves a rounding
    residue above the floor on some diagonal entries (here 8e-4 instead of 1.7e-6)."""
    student, teacher = embeddings()
    loss = rkd_loss(tf.constant(student, tf.float32), tf.constant(teacher, tf.float32))
    np.testing.assert_allclose(loss.numpy(), reference_rkd(student, teacher), rtol=1e-4)


def test_distance_mean_counts_the_diagonal():
    """The floor makes the B zero self-distances positive (1e-6): the normaliser is the
    mean over all B^2 entries, not the paper's mean over pairs i != j."""
    student, _ = embeddings()
    normalised = tf.math.l2_normalize(tf.constant(student), axis=1)
    potential = distance_potential(normalised).numpy()
    assert np.all(np.diag(potential) > 0)
    np.testing.assert_allclose(potential.mean(), 1.0, rtol=1e-7)


def test_zero_difference_vectors_stay_zero_and_keep_gradients_finite():
    student, teacher = embeddings()
    student[1] = student[0]
    student_tensor = tf.constant(student)
    with tf.GradientTape() as tape:
        tape.watch(student_tensor)
        loss = rkd_loss(student_tensor, tf.constant(teacher))
    angles = angle_potential(tf.math.l2_normalize(student_tensor, axis=1)).numpy()
    assert np.all(angles[np.arange(BATCH), np.arange(BATCH)] == 0)
    assert np.all(angles[0, 1] == 0) and np.all(angles[1, 0] == 0)
    np.testing.assert_allclose(loss.numpy(), reference_rkd(student, teacher), rtol=1e-12)
    assert np.all(np.isfinite(tape.gradient(loss, student_tensor).numpy()))


@pytest.mark.parametrize("student_shape, teacher_shape, message", [
    ((BATCH, 4, 4, 16), (BATCH, 24), r"\[B, D\] embeddings"),
    ((BATCH, 16), (BATCH + 1, 24), "same batch"),
])
def test_mismatched_embeddings_are_user_errors(student_shape, teacher_shape, message):
    with pytest.raises(UserError, match=message):
        rkd_loss(tf.zeros(student_shape), tf.zeros(teacher_shape))


def test_graph_mode_with_an_unknown_batch_equals_eager():
    student, teacher = embeddings()
    traced = tf.function(rkd_loss, input_signature=[tf.TensorSpec([None, 16], tf.float64),
                                                    tf.TensorSpec([None, 24], tf.float64)])
    np.testing.assert_allclose(traced(student, teacher).numpy(), reference_rkd(student, teacher),
                               rtol=1e-12)
