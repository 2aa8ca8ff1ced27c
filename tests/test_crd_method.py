"""The registered `crd` method (sskd_tf.losses.CRDDistillation): two training steps against
tests/test_crd_loss.py's numpy transcription on the negatives it draws, its memory banks, Z
and draw count in the run's checkpoint, and what it refuses."""
import numpy as np
import pytest
import tensorflow as tf

import sskd_tf.losses
from sskd_tf.distill import build_method
from sskd_tf.distill.soft_logits import soft_logits_loss
from sskd_tf.errors import UserError, one_line
from sskd_tf.training.callbacks import trained_networks
from test_crd_loss import (DIM, FIRST, LABELS, NEGATIVES, SECOND, ReferenceCRD, features,
                           memories)

OPTIONS = {"num_negatives": NEGATIVES, "feature_dim": DIM}


def labelled_batches(batch=16):
    indices = np.arange(len(LABELS))
    return tf.data.Dataset.from_tensor_slices((
        {"images": tf.zeros([len(LABELS), 2, 2, 3]), "sample_indices": indices},
        LABELS)).shuffle(len(LABELS), seed=0).batch(batch)


def outputs(student_features, teacher_features, as_maps=False):
    """The networks' outputs whose last tap is `features` ([B, D]), or a [B, 2, 2, D] map of
    which it is the spatial mean."""
    def tap(x):
        x = tf.constant(x, tf.float32)
        if as_maps:
            x = tf.stack([x + 1.0, x - 1.0, 2.0 * x, 0.0 * x], axis=1)
            x = tf.reshape(x, [-1, 2, 2, x.shape[-1]]) * 1.0
        return x
    logits = tf.zeros([len(student_features), 4])
    return ({"logits": logits, "features": [tap(student_features)]},
            {"logits": logits, "features": [tap(teacher_features)]})


def prepared(seed=1):
    np.random.seed(seed)
    method = sskd_tf.losses.CRDDistillation(["t"], ["s"], **OPTIONS).method
    method.prepare(None, labelled_batches())
    student, teacher = features(99)
    method(*outputs(student, teacher), None, sample_indices=tf.constant(FIRST))  # builds
    return method


@pytest.mark.parametrize("as_maps", [False, True], ids=["vectors", "maps"])
def test_two_training_steps_match_the_reference(as_maps):
    method = prepared()
    assert method.task_weight == 1.0 and method.recipe == "crd2020" and method.num_data == 40
    reference = ReferenceCRD(method.criterion)
    step = tf.function(lambda *args, **kwargs: method(*args, training=True, **kwargs))
    for count, (seed, samples) in enumerate(((4, FIRST), (5, SECOND))):
        student, teacher = features(seed)
        assert method.draw_seed.numpy()[1] == count
        contrast = method.sampler(tf.constant(samples), method.draw_seed.value).numpy()
        assert np.all(LABELS[contrast[:, 1:]] != LABELS[samples][:, None])
        terms = step(*outputs(student, teacher, as_maps), None,
                     sample_indices=tf.constant(samples))
        want = reference.step(student, teacher, samples, contrast)
        np.testing.assert_allclose(float(terms["crd"]), 0.8 * want, rtol=2e-5)
        memory_s, memory_t, z_s, z_t = memories(method.criterion)
        np.testing.assert_allclose([z_s, z_t], [reference.z_s, reference.z_t], rtol=1e-5)
        np.testing.assert_allclose(memory_s, reference.memory_s, atol=1e-6)
        np.testing.assert_allclose(memory_t, reference.memory_t, atol=1e-6)
    assert set(terms) == {"crd"}


def _checkpoint(method):
    """What the run's checkpoint holds of the method (training/callbacks.RunCheckpoint)."""
    return tf.train.Checkpoint(method_weights=trained_networks(None, method)["method_weights"])


def test_banks_z_and_draws_are_in_the_checkpoint_and_a_restored_method_replays(tmp_path):
    method = prepared(seed=1)
    student, teacher = features(7)
    method(*outputs(student, teacher), None, training=True, sample_indices=tf.constant(FIRST))
    path = _checkpoint(method).write(str(tmp_path / "crd"))
    restored = prepared(seed=2)
    assert restored.draw_seed.numpy()[0] != method.draw_seed.numpy()[0]
    _checkpoint(restored).read(path).assert_consumed()
    for old, new in zip(memories(method.criterion), memories(restored.criterion)):
        np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(restored.draw_seed.numpy(), method.draw_seed.numpy())
    student, teacher = features(8)
    losses = [float(m(*outputs(student, teacher), None, training=True,
                      sample_indices=tf.constant(SECOND))["crd"]) for m in (method, restored)]
    assert losses[0] == losses[1]
    for old, new in zip(memories(method.criterion), memories(restored.criterion)):
        np.testing.assert_array_equal(new, old)


def test_crd_plus_kd_adds_repdistillers_kd_term():
    np.random.seed(0)
    method = build_method("crd", kd_weight=1.0, **OPTIONS)
    method.prepare(None, labelled_batches())
    student, teacher = features(3)
    student_out, teacher_out = outputs(student, teacher)
    rng = np.random.default_rng(4)
    student_out["logits"], teacher_out["logits"] = (tf.constant(x, tf.float32)
                                                    for x in rng.normal(size=(2, 4, 5)))
    terms = method(student_out, teacher_out, None, sample_indices=tf.constant(FIRST))
    np.testing.assert_allclose(float(terms["kd"]), float(soft_logits_loss(
        student_out["logits"], teacher_out["logits"], 4.0, scale_by_t_squared=True)), rtol=1e-6)


class _TwoReplicas:
    num_replicas_in_sync = 2


def test_several_replicas_are_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: _TwoReplicas())
    with pytest.raises(UserError) as error:
        build_method("crd")
    assert one_line(str(error.value)) == str(error.value)
    assert "one replica" in str(error.value) and "--strategy=default" in str(error.value)


def test_crd_needs_the_training_labels_by_index_before_it_is_built():
    method = build_method("crd", **OPTIONS)
    student, teacher = features(1)
    with pytest.raises(UserError, match="prepare"):
        method(*outputs(student, teacher), None, sample_indices=tf.constant(FIRST))
    unindexed = tf.data.Dataset.from_tensor_slices((tf.zeros([4, 2, 2, 3]), LABELS[:4])).batch(2)
    with pytest.raises(UserError, match="sample_indices"):
        build_method("crd").prepare(None, unindexed)
    partial = labelled_batches().take(1)
    with pytest.raises(UserError, match="label of every training example"):
        build_method("crd").prepare(None, partial)
