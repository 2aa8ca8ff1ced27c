"""CRD (RepDistiller `crd/criterion.py`, `crd/memory.py`, `CIFAR100InstanceSample`) against a
numpy transcription in float64 written here, which gathers [B, K + 1, d] memory rows as
RepDistiller does."""
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.distill.crd import (ContrastMemory, ContrastSampler, CRDCriterion, CRDEmbedding,
                                 contrast_loss)
from sskd_tf.errors import UserError

CLASSES, PER_CLASS, NEGATIVES, DIM = 4, 10, 12, 8
N_DATA = CLASSES * PER_CLASS
STUDENT_WIDTH, TEACHER_WIDTH = 6, 5
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(CLASSES), PER_CLASS))
FIRST, SECOND = np.array([3, 17, 25, 38]), np.array([17, 3, 30, 8])


def l2_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_contrast_loss(scores, num_data):
    batch, m = scores.shape[0], scores.shape[1] - 1
    noise = m * (1.0 / num_data)
    log_d1 = np.log(scores[:, 0] / (scores[:, 0] + noise + 1e-7))
    log_d0 = np.log(noise / (scores[:, 1:] + noise + 1e-7))
    return -(log_d1.sum() + log_d0.sum()) / batch


class ReferenceCRD:
    """RepDistiller's CRDLoss forward, one training step at a time."""

    def __init__(self, criterion):
        self.heads = [(h.kernel.numpy(), h.bias.numpy())
                      for h in (criterion.student_embedding, criterion.teacher_embedding)]
        self.memory_s = criterion.memory.student_memory.numpy().copy()
        self.memory_t = criterion.memory.teacher_memory.numpy().copy()
        self.z_s = self.z_t = -1.0

    def embed(self, features, side, kernel=None):
        own_kernel, bias = self.heads[side]
        return l2_normalize(features @ (own_kernel if kernel is None else kernel) + bias)

    def scores(self, student, teacher, contrast):
        """Unnormalised: the student against the teacher's memory, and the other way."""
        out_s = np.exp(np.einsum("bkd,bd->bk", self.memory_t[contrast], student) / 0.07)
        out_t = np.exp(np.einsum("bkd,bd->bk", self.memory_s[contrast], teacher) / 0.07)
        return out_s, out_t

    def loss(self, out_s, out_t, z_s, z_t):
        return (reference_contrast_loss(out_s / z_s, N_DATA)
                + reference_contrast_loss(out_t / z_t, N_DATA))

    def step(self, student_features, teacher_features, samples, contrast, update=True):
        student, teacher = self.embed(student_features, 0), self.embed(teacher_features, 1)
        out_s, out_t = self.scores(student, teacher, contrast)
        if self.z_s < 0:
            self.z_s = out_s.mean() * N_DATA
        if self.z_t < 0:
            self.z_t = out_t.mean() * N_DATA
        loss = self.loss(out_s, out_t, self.z_s, self.z_t)
        if update:
            self.memory_s[samples] = l2_normalize(0.5 * self.memory_s[samples] + 0.5 * student)
            self.memory_t[samples] = l2_normalize(0.5 * self.memory_t[samples] + 0.5 * teacher)
        return loss


def features(seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(len(FIRST), STUDENT_WIDTH)),
            np.abs(rng.normal(size=(len(FIRST), TEACHER_WIDTH))))


def contrast_indices(samples, seed):
    return ContrastSampler(LABELS, NEGATIVES)(samples, tf.constant([seed, 0])).numpy()


def built_criterion(seed=1):
    """A float64 criterion whose heads exist, built by a call that writes nothing."""
    criterion = CRDCriterion(N_DATA, dim=DIM, seed=seed, dtype="float64")
    criterion(*features(99), FIRST, contrast_indices(FIRST, 99), training=False)
    return criterion


def memories(criterion):
    memory = criterion.memory
    return (memory.student_memory.numpy(), memory.teacher_memory.numpy(),
            float(memory.student_normalizer.numpy()), float(memory.teacher_normalizer.numpy()))


def test_contrast_loss_matches_the_reference():
    scores = np.random.default_rng(2).uniform(1e-5, 3e-3, size=(5, NEGATIVES + 1))
    np.testing.assert_allclose(float(contrast_loss(tf.constant(scores), N_DATA)),
                               reference_contrast_loss(scores, N_DATA), rtol=1e-12)


def test_an_evaluation_call_writes_nothing():
    criterion = CRDCriterion(N_DATA, dim=DIM, seed=1, dtype="float64")
    before = memories(criterion)
    criterion(*features(3), FIRST, contrast_indices(FIRST, 3), training=False)
    after = memories(criterion)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new, old)
    assert after[2:] == (-1.0, -1.0)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf_function"])
def test_two_training_steps_match_the_reference(traced):
    """Z comes from the first batch and stays; the second step's positives (samples 17 and 3)
    are the memory rows the first step wrote."""
    criterion = built_criterion()
    reference, frozen = ReferenceCRD(criterion), ReferenceCRD(criterion)

    def train_step(*inputs):
        return criterion(*inputs, training=True)

    step = tf.function(train_step) if traced else train_step
    for seed, samples in ((4, FIRST), (5, SECOND)):
        student_features, teacher_features = features(seed)
        contrast = contrast_indices(samples, seed)
        loss = step(*(tf.constant(x) for x in (student_features, teacher_features, samples,
                                                 contrast)))
        want = reference.step(student_features, teacher_features, samples, contrast)
        stale = frozen.step(student_features, teacher_features, samples, contrast, update=False)
        np.testing.assert_allclose(float(loss), want, rtol=1e-10)
        memory_s, memory_t, z_s, z_t = memories(criterion)
        np.testing.assert_allclose([z_s, z_t], [reference.z_s, reference.z_t], rtol=1e-12)
        np.testing.assert_allclose(memory_s, reference.memory_s, rtol=1e-12)
        np.testing.assert_allclose(memory_t, reference.memory_t, rtol=1e-12)
    assert abs(stale - want) > 1e-3 * abs(want)
    assert frozen.z_s == reference.z_s


def test_gradients_of_the_first_step_by_finite_differences():
    """The first batch sets Z and divides by it; Z carries no gradient. The teacher's features
    get none; its head does."""
    criterion = built_criterion()
    reference = ReferenceCRD(criterion)
    student_features, teacher_features = features(6)
    contrast = contrast_indices(FIRST, 6)
    student_tf, teacher_tf = tf.constant(student_features), tf.constant(teacher_features)
    kernels = [criterion.student_embedding.kernel, criterion.teacher_embedding.kernel]
    with tf.GradientTape() as tape:
        tape.watch([student_tf, teacher_tf])
        loss = criterion(student_tf, teacher_tf, FIRST, contrast, training=True)
    d_student, d_teacher, d_kernel_s, d_kernel_t = tape.gradient(
        loss, [student_tf, teacher_tf] + kernels)
    assert d_teacher is None
    _, _, z_s, z_t = memories(criterion)

    def reference_loss(student_f, kernel_s, kernel_t):
        student = reference.embed(student_f, 0, kernel_s)
        teacher = reference.embed(teacher_features, 1, kernel_t)
        return reference.loss(*reference.scores(student, teacher, contrast), z_s, z_t)

    point = [student_features, reference.heads[0][0], reference.heads[1][0]]
    for position, analytic in enumerate([d_student, d_kernel_s, d_kernel_t]):
        numeric = np.zeros_like(point[position])
        for index in np.ndindex(numeric.shape):
            shifted = [[p.copy() for p in point] for _ in range(2)]
            shifted[0][position][index] += 1e-6
            shifted[1][position][index] -= 1e-6
            numeric[index] = (reference_loss(*shifted[0]) - reference_loss(*shifted[1])) / 2e-6
        np.testing.assert_allclose(np.asarray(analytic), numeric, rtol=1e-5, atol=1e-7)


def test_a_restored_memory_keeps_its_z(tmp_path):
    criterion = built_criterion()
    student_features, teacher_features = features(7)
    criterion(student_features, teacher_features, FIRST, contrast_indices(FIRST, 7),
              training=True)
    path = tf.train.Checkpoint(weights=list(criterion.weights)).write(str(tmp_path / "crd"))
    restored = built_criterion(seed=8)
    tf.train.Checkpoint(weights=list(restored.weights)).read(path).assert_consumed()
    for old, new in zip(memories(criterion), memories(restored)):
        np.testing.assert_array_equal(new, old)
    second = features(8) + (SECOND, contrast_indices(SECOND, 8))
    losses = [float(c(*second, training=True)) for c in (criterion, restored)]
    assert losses[0] == losses[1]
    assert memories(restored)[2:] == memories(criterion)[2:]


def test_mixed_precision_heads_feed_a_float32_memory():
    criterion = CRDCriterion(N_DATA, dim=DIM, seed=1, dtype="mixed_float16")
    student_features, teacher_features = features(11)
    loss = criterion(tf.constant(student_features, tf.float16),
                     tf.constant(teacher_features, tf.float16), FIRST,
                     contrast_indices(FIRST, 11), training=True)
    assert criterion.student_embedding.kernel.dtype == "float32"
    assert loss.dtype == tf.float32 and criterion.memory.student_memory.dtype == "float32"
    assert np.isfinite(float(loss)) and float(criterion.memory.student_normalizer.numpy()) > 0


def test_memory_starts_uniform_in_plus_minus_one_over_sqrt_of_d_over_three():
    memory = ContrastMemory(2000, 128, seed=0)
    values = memory.student_memory.numpy()
    bound = 1.0 / np.sqrt(128 / 3)
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound
    assert abs(values.mean()) < 0.01 * bound
    assert not np.array_equal(values, memory.teacher_memory.numpy())


def test_crd_rejects_wrong_shapes():
    with pytest.raises(UserError, match="pooled"):
        CRDEmbedding(DIM)(tf.zeros([2, 4, 4, 3]))
    memory = ContrastMemory(N_DATA, DIM)
    embedding = tf.zeros([4, DIM])
    with pytest.raises(UserError, match=r"\[batch, K \+ 1\]"):
        memory(embedding, embedding, tf.constant(FIRST), tf.constant(FIRST))
    with pytest.raises(UserError, match="batch size"):
        memory(embedding, embedding, tf.constant(FIRST[:3]), contrast_indices(FIRST, 1))
    with pytest.raises(UserError, match="at least one training example"):
        ContrastMemory(0, DIM)


# ------------------------------------------------------------------------- sampler


def test_sampler_draws_other_classes_after_the_positive():
    contrast = contrast_indices(np.arange(N_DATA), 9)
    assert contrast.shape == (N_DATA, NEGATIVES + 1)
    np.testing.assert_array_equal(contrast[:, 0], np.arange(N_DATA))
    assert np.all(LABELS[contrast[:, 1:]] != LABELS[:, None])
    assert all(len(set(row)) == NEGATIVES for row in contrast[:, 1:])


def test_sampler_replays_from_its_seed():
    sampler = ContrastSampler(LABELS, NEGATIVES)
    draws = [sampler(FIRST, tf.constant(seed)).numpy() for seed in ([1, 2], [1, 2], [1, 3])]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    traced = tf.function(sampler)(tf.constant(FIRST), tf.constant([1, 2]))
    np.testing.assert_array_equal(traced.numpy(), draws[0])


def test_sampler_is_uniform_over_the_other_classes():
    samples = np.zeros(3000, np.int64)
    negatives = contrast_indices(samples, 10)[:, 1:]
    others = np.flatnonzero(LABELS != LABELS[0])
    counts = np.bincount(negatives.ravel(), minlength=N_DATA)
    expected = len(samples) * NEGATIVES / len(others)
    assert counts.sum() == counts[others].sum()
    assert np.all(np.abs(counts[others] - expected) < 0.1 * expected)


def test_sampler_replaces_only_when_the_pool_is_smaller_than_k():
    """Classes of 2, 3 and 6 examples, K = 6: class 1 has 8 others (drawn without
    replacement, its padded pool row never read), class 2 has 5 (drawn with replacement)."""
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    samples = np.array([2] * 20 + [5] * 20)
    contrast = ContrastSampler(labels, 6)(samples, tf.constant([3, 4])).numpy()[:, 1:]
    from_class_1, from_class_2 = contrast[:20], contrast[20:]
    assert np.all((contrast >= 0) & (contrast < len(labels)))
    assert np.all(labels[from_class_1] != 1)
    assert all(len(set(row)) == 6 for row in from_class_1)
    assert np.all(from_class_2 < 5)
    assert len(set(from_class_2.ravel())) == 5


def test_sampler_rejects_unusable_labels():
    with pytest.raises(UserError, match="only one class"):
        ContrastSampler(np.zeros(5, np.int64), 2)
    with pytest.raises(UserError, match="integer classes"):
        ContrastSampler(np.array([0.0, 1.0]), 2)
