"""DML's loss (sskd_tf/distill/dml.py) against a numpy transcription of KD_methods_with_TF
`nets/Response.py: DML`, in float64: both networks train on it, so both get a gradient."""
import numpy as np
import pytest
import tensorflow as tf

import kd_reference as kref
from sskd_tf.distill.dml import mutual_learning_loss
from sskd_tf.errors import UserError

BATCH, CLASSES = 4, 100


def mean_kl_reference(p_logits, q_logits):
    """mean over the batch of sum_c p (log p - log q), one sample at a time."""
    total = 0.0
    for p_row, q_row in zip(p_logits, q_logits):
        log_p, log_q = kref.log_softmax(p_row), kref.log_softmax(q_row)
        total += np.sum(np.exp(log_p) * (log_p - log_q))
    return total / len(p_logits)


def dml_reference(student, peer):
    return (mean_kl_reference(peer, student) + mean_kl_reference(student, peer)) / 2


def test_value_and_gradients_for_both_networks():
    rng = np.random.default_rng(0)
    student_logits, peer_logits = rng.normal(0, 3, (BATCH, CLASSES)), rng.normal(0, 3, (BATCH, CLASSES))
    student, peer = tf.Variable(student_logits), tf.Variable(peer_logits)
    with tf.GradientTape() as tape:
        loss = mutual_learning_loss(student, peer)
    np.testing.assert_allclose(loss.numpy(), dml_reference(student_logits, peer_logits), rtol=1e-12)
    grads = tape.gradient(loss, [student, peer])
    for which, gradient in enumerate(grads):
        expected = np.zeros((BATCH, CLASSES))
        for index in np.ndindex(expected.shape):
            def along(t, index=index):
                moved = [student_logits.copy(), peer_logits.copy()]
                moved[which][index] += t
                return dml_reference(*moved)

            expected[index] = kref.central_difference(along)
        assert np.max(np.abs(expected)) > 1e-3
        np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_symmetric_and_zero_only_for_equal_predictions():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(BATCH, 10)), rng.normal(size=(BATCH, 10))
    np.testing.assert_allclose(mutual_learning_loss(a, b).numpy(), mutual_learning_loss(b, a).numpy(), rtol=1e-12)
    assert mutual_learning_loss(a, b).numpy() > 0
    # No temperature: softmax(a + c) = softmax(a), and the loss sees only the predictions.
    np.testing.assert_allclose(mutual_learning_loss(a, a + 5.0).numpy(), 0.0, atol=1e-12)
    assert mutual_learning_loss(a, 2 * a).numpy() > 1e-3


def test_logits_of_other_classes_are_a_user_error():
    with pytest.raises(UserError, match="same classes"):
        mutual_learning_loss(tf.zeros((2, 10)), tf.zeros((2, 100)))


def test_the_registered_loss_gives_each_network_its_terms():
    """`sskd_tf.losses.DMLDistillation`: the student's update reads the mutual loss alone (its
    cross-entropy is the task's), the peer's update its cross-entropy and the same mutual loss;
    no temperature, unweighted as the authors' unless `weight` says otherwise."""
    from sskd_tf import losses

    rng = np.random.default_rng(3)
    student_logits, peer_logits = rng.normal(0, 3, (BATCH, 10)), rng.normal(0, 3, (BATCH, 10))
    labels = rng.integers(0, 10, BATCH)
    student, peer = {"logits": tf.constant(student_logits)}, {"logits": tf.constant(peer_logits)}
    loss = losses.DMLDistillation()
    mutual = dml_reference(student_logits, peer_logits)
    terms = loss.method(student, peer, tf.constant(labels))
    np.testing.assert_allclose(terms["dml"].numpy(), mutual, rtol=1e-6)
    assert set(terms) == {"dml"}
    np.testing.assert_allclose(loss.compute_loss(peer, student, tf.constant(labels)).numpy(), mutual,
                               rtol=1e-6)
    peer_terms = loss.method.peer_loss(student, peer, tf.constant(labels))
    cross_entropy = -np.mean(kref.log_softmax(peer_logits)[np.arange(BATCH), labels])
    np.testing.assert_allclose(peer_terms["peer_ce"].numpy(), cross_entropy, rtol=1e-6)
    np.testing.assert_allclose(peer_terms["peer_dml"].numpy(), mutual, rtol=1e-6)
    weighted = losses.DMLDistillation(weight=2.0).method
    np.testing.assert_allclose(weighted(student, peer, tf.constant(labels))["dml"].numpy(), 2 * mutual,
                               rtol=1e-6)
    np.testing.assert_allclose(weighted.peer_loss(student, peer, tf.constant(labels))["peer_dml"].numpy(),
                               2 * mutual, rtol=1e-6)
