"""The registered logit methods of today's benchmark: `dkd` (sskd_tf.losses.DKDDistillation)
against tests/test_dkd_loss.py's numpy transcription, its warm-up from the step's
`stage_epoch`, and `soft_logits` with logit standardization and its own task weight."""
import numpy as np
import pytest
import tensorflow as tf

import sskd_tf.losses
from kd_reference import log_softmax, softmax
from sskd_tf.distill import build_method
from sskd_tf.errors import UserError
from test_dkd_loss import logits_case, reference_standardized, reference_terms

T = 4.0


def _outputs(student, teacher):
    return ({"logits": tf.constant(student, tf.float32), "features": []},
            {"logits": tf.constant(teacher, tf.float32), "features": []})


def test_dkd_loss_class_matches_the_reference():
    student, teacher, labels = logits_case("teacher_wrong", seed=3)
    tckd, nckd = reference_terms(student, teacher, labels, T)
    loss = sskd_tf.losses.DKDDistillation(alpha=1.5, beta=8.0)
    assert loss.method.task_weight == 1.0 and loss.method.recipe == "crd2020"
    value = loss.compute_loss(tf.constant(teacher, tf.float32), tf.constant(student, tf.float32),
                              labels=tf.constant(labels))
    np.testing.assert_allclose(float(value), 1.5 * tckd + 8.0 * nckd, rtol=1e-5)


def test_dkd_warms_up_over_its_stage_epochs():
    student, teacher, labels = logits_case("plain", seed=4)
    tckd, nckd = reference_terms(student, teacher, labels, T)
    full = tckd + 8.0 * nckd
    method = build_method("dkd")
    for epoch, factor in [(0.0, 0.05), (9.0, 0.5), (19.0, 1.0), (50.0, 1.0)]:
        terms = method(*_outputs(student, teacher), tf.constant(labels), training=True,
                       stage_epoch=tf.constant(epoch))
        np.testing.assert_allclose(float(terms["dkd"]), factor * full, rtol=1e-5)
    unwarmed = build_method("dkd", warmup=0)(*_outputs(student, teacher), tf.constant(labels),
                                              stage_epoch=tf.constant(0.0))
    np.testing.assert_allclose(float(unwarmed["dkd"]), full, rtol=1e-5)


def test_dkd_with_logit_standardization_matches_the_reference():
    student, teacher, labels = logits_case("scale_50", seed=5)
    tckd, nckd = reference_terms(reference_standardized(student),
                                 reference_standardized(teacher), labels, 2.0)
    method = build_method("dkd", alpha=9.0, beta=72.0, temperature=2.0,
                          logit_standardization=True)
    terms = method(*_outputs(student, teacher), tf.constant(labels),
                   stage_epoch=tf.constant(30.0))
    np.testing.assert_allclose(float(terms["dkd"]), 9.0 * tckd + 72.0 * nckd, rtol=1e-4)


def _reference_kd(student, teacher, temperature):
    teacher_log_p = log_softmax(teacher / temperature)
    return np.mean(np.sum(softmax(teacher / temperature)
                          * (teacher_log_p - log_softmax(student / temperature)), axis=-1))


def test_soft_logits_with_logit_standardization_matches_the_reference():
    """The anchors' KD + LS: T 2, the KD term times T^2 and 9, the task loss 0.1."""
    rng = np.random.default_rng(8)
    student, teacher = rng.normal(0.0, 3.0, size=(2, 6, 10))
    expected = 9.0 * 4.0 * _reference_kd(reference_standardized(student),
                                         reference_standardized(teacher), 2.0)
    method = build_method("soft_logits", logit_standardization=True, temperature=2.0,
                          kd_weight=9.0, ce_weight=0.1, scale_by_t_squared=True)
    assert method.task_weight == pytest.approx(0.1)
    terms = method(*_outputs(student, teacher), None)
    np.testing.assert_allclose(float(terms["soft_logits"]), expected, rtol=1e-5)


def test_soft_logits_defaults_are_unchanged():
    rng = np.random.default_rng(9)
    student, teacher = rng.normal(0.0, 3.0, size=(2, 6, 10))
    method = sskd_tf.losses.SoftLogitsDistillation().method
    assert method.task_weight == pytest.approx(0.7)
    terms = method(*_outputs(student, teacher), None)
    np.testing.assert_allclose(float(terms["soft_logits"]),
                               0.3 * _reference_kd(student, teacher, 4.0), rtol=1e-5)
    assert build_method("soft_logits", kd_weight=0.5, ce_weight=1.0).task_weight == 1.0
    with pytest.raises(UserError, match="give ce_weight"):
        build_method("soft_logits", kd_weight=9.0)
