"""DKD (mdistiller `dkd_loss`) and logit standardization (logit-standardization-KD
`normalize`) against numpy transcriptions in float64 written here."""
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.distill.dkd import dkd_loss, dkd_terms, dkd_warmup_factor
from sskd_tf.distill.logit_standardization import standardize_logits
from sskd_tf.distill.soft_logits import soft_logits_loss
from sskd_tf.errors import UserError

BATCH, CLASSES, T = 6, 10, 4.0


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def without_column(x, labels):
    """[B, C] -> [B, C - 1]: each row without its label's entry."""
    keep = np.ones(x.shape, bool)
    keep[np.arange(len(labels)), labels] = False
    return x[keep].reshape(x.shape[0], -1)


def reference_terms(student, teacher, labels, temperature):
    """TCKD and NCKD as the paper defines them: binary (target, sum of the others) KL, and
    the KL of the distributions over the non-target classes alone."""
    batch = len(labels)
    rows = np.arange(batch)
    p_s, p_t = softmax(student / temperature), softmax(teacher / temperature)
    b_s = np.stack([p_s[rows, labels], without_column(p_s, labels).sum(1)], 1)
    b_t = np.stack([p_t[rows, labels], without_column(p_t, labels).sum(1)], 1)
    tckd = np.sum(b_t * (np.log(b_t) - np.log(b_s))) * temperature ** 2 / batch
    q_s = softmax(without_column(student, labels) / temperature)
    q_t = softmax(without_column(teacher, labels) / temperature)
    nckd = np.sum(q_t * (np.log(q_t) - np.log(q_s))) * temperature ** 2 / batch
    return tckd, nckd


def reference_gradients(student, teacher, labels, temperature):
    """d TCKD / dz and d NCKD / dz, derived by hand: (T / B)(onehot - s)(b - t_b) / (1 - b),
    and (T / B)(r - q) over the non-target classes (0 at the target)."""
    batch = len(labels)
    rows = np.arange(batch)
    onehot = np.eye(student.shape[1])[labels]
    s, t = softmax(student / temperature), softmax(teacher / temperature)
    b, t_b = s[rows, labels][:, None], t[rows, labels][:, None]
    tckd = temperature / batch * (onehot - s) * (b - t_b) / (1.0 - b)
    r = softmax(without_column(student, labels) / temperature)
    q = softmax(without_column(teacher, labels) / temperature)
    nckd = np.zeros_like(student)
    nckd[onehot == 0] = (temperature / batch * (r - q)).ravel()
    return tckd, nckd


def logits_case(name, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, BATCH)
    student, teacher = rng.normal(size=(2, BATCH, CLASSES))
    if name == "offset":
        student, teacher = student + 1000.0, teacher + 1000.0
    elif name == "scale_50":
        student, teacher = 50.0 * student, 50.0 * teacher
    elif name == "teacher_wrong":
        wrong = (labels + 1) % CLASSES
        teacher[np.arange(BATCH), wrong] += 6.0
        assert np.all(teacher.argmax(1) != labels)
    return student, teacher, labels


def tf_terms_and_gradients(student, teacher, labels, dtype=tf.float64):
    student = tf.constant(student, dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(student)
        tckd, nckd = dkd_terms(student, tf.constant(teacher, dtype), tf.constant(labels), T)
    return (float(tckd), float(nckd), tape.gradient(tckd, student).numpy(),
            tape.gradient(nckd, student).numpy())


@pytest.mark.parametrize("case", ["plain", "offset", "scale_50", "teacher_wrong"])
def test_dkd_terms_and_gradients_match_the_reference(case):
    student, teacher, labels = logits_case(case)
    tckd, nckd, d_tckd, d_nckd = tf_terms_and_gradients(student, teacher, labels)
    want_tckd, want_nckd = reference_terms(student, teacher, labels, T)
    want_d_tckd, want_d_nckd = reference_gradients(student, teacher, labels, T)
    np.testing.assert_allclose([tckd, nckd], [want_tckd, want_nckd], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d_tckd, want_d_tckd, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(d_nckd, want_d_nckd, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("case", ["offset", "scale_50"])
def test_dkd_in_float32_at_large_logits(case):
    student, teacher, labels = logits_case(case, seed=1)
    tckd, nckd, d_tckd, d_nckd = tf_terms_and_gradients(student, teacher, labels, tf.float32)
    want_tckd, want_nckd = reference_terms(student, teacher, labels, T)
    want_d_tckd, want_d_nckd = reference_gradients(student, teacher, labels, T)
    np.testing.assert_allclose([tckd, nckd], [want_tckd, want_nckd], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(d_tckd, want_d_tckd, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(d_nckd, want_d_nckd, rtol=2e-3, atol=1e-4)


def test_dkd_loss_weights_the_two_terms_and_stops_the_teacher_gradient():
    student, teacher, labels = logits_case("plain", seed=2)
    want_tckd, want_nckd = reference_terms(student, teacher, labels, 2.0)
    student, teacher = tf.constant(student), tf.constant(teacher)
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        loss = dkd_loss(student, teacher, tf.constant(labels), 9.0, 72.0, 2.0)
    np.testing.assert_allclose(float(loss), 9.0 * want_tckd + 72.0 * want_nckd, rtol=1e-9)
    assert tape.gradient(loss, teacher) is None


def test_nckd_ignores_the_target_logits_and_tckd_does_not():
    student, teacher, labels = logits_case("plain", seed=3)
    moved_teacher, moved_student = teacher.copy(), student.copy()
    moved_teacher[np.arange(BATCH), labels] += 3.0
    moved_student[np.arange(BATCH), labels] -= 2.0
    tckd, nckd = (float(v) for v in dkd_terms(student, teacher, labels, T))
    moved_tckd, moved_nckd = (float(v) for v in dkd_terms(moved_student, moved_teacher, labels, T))
    np.testing.assert_allclose(moved_nckd, nckd, rtol=1e-12)
    assert abs(moved_tckd - tckd) > 1e-3


def test_tckd_is_infinite_when_the_student_non_target_mass_underflows():
    """mdistiller takes torch.log of the two bins with no clamp; kept."""
    student, teacher, labels = logits_case("plain", seed=4)
    student[np.arange(BATCH), labels] += 500.0
    tckd, nckd = dkd_terms(tf.constant(student, tf.float32), tf.constant(teacher, tf.float32),
                           labels, T)
    assert np.isinf(float(tckd)) and np.isfinite(float(nckd))


def test_dkd_rejects_mismatched_inputs():
    logits = tf.zeros([4, CLASSES])
    with pytest.raises(UserError, match="one shape"):
        dkd_terms(logits, tf.zeros([4, CLASSES + 1]), tf.zeros([4], tf.int32), T)
    with pytest.raises(UserError, match="one label per row"):
        dkd_terms(logits, logits, tf.zeros([3], tf.int32), T)


def test_warmup_factor_counts_epochs_from_one():
    factors = [float(dkd_warmup_factor(epoch, 20)) for epoch in (0, 9, 18, 19, 100)]
    np.testing.assert_allclose(factors, [0.05, 0.5, 0.95, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(float(dkd_warmup_factor(tf.constant(4.0), 20)), 0.25, rtol=1e-6)
    with pytest.raises(UserError, match="warm-up"):
        dkd_warmup_factor(0, 0)


# ------------------------------------------------------------ logit standardization


def reference_standardized(z):
    return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def test_standardize_logits_value_and_unbiased_std():
    z = np.random.default_rng(5).normal(3.0, 4.0, size=(BATCH, CLASSES))
    np.testing.assert_allclose(standardize_logits(tf.constant(z)).numpy(),
                               reference_standardized(z), rtol=1e-12)
    row = standardize_logits(tf.constant([[1.0, -1.0, 0.0]], tf.float64)).numpy()
    np.testing.assert_allclose(row, [[1.0, -1.0, 0.0]], rtol=1e-6)


def test_standardize_logits_gradient_by_finite_differences():
    rng = np.random.default_rng(6)
    z, weights = rng.normal(size=(2, 3, 7))
    z_tf = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z_tf)
        value = tf.reduce_sum(weights * standardize_logits(z_tf))
    step = 1e-6
    numeric = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        shift = np.zeros_like(z)
        shift[index] = step
        numeric[index] = (np.sum(weights * reference_standardized(z + shift))
                          - np.sum(weights * reference_standardized(z - shift))) / (2 * step)
    np.testing.assert_allclose(tape.gradient(value, z_tf).numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_standardize_logits_of_a_constant_row():
    """torch's std has a zero subgradient at std 0: only the mean's path remains."""
    weights = np.array([[0.5, -1.0, 2.0, 0.0]])
    z = tf.constant([[3.0, 3.0, 3.0, 3.0]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = standardize_logits(z)
        value = tf.reduce_sum(weights * out)
    np.testing.assert_array_equal(out.numpy(), 0.0)
    np.testing.assert_allclose(tape.gradient(value, z).numpy(), (weights - weights.mean()) / 1e-7,
                               rtol=1e-9)


def test_standardized_kd_ignores_each_row_scale_and_shift():
    rng = np.random.default_rng(7)
    student, teacher = rng.normal(size=(2, BATCH, CLASSES))
    scales, shifts = rng.uniform(0.2, 5.0, (BATCH, 1)), rng.normal(0.0, 50.0, (BATCH, 1))
    losses = [float(soft_logits_loss(standardize_logits(tf.constant(s)),
                                     standardize_logits(tf.constant(teacher)), 2.0, True))
              for s in (student, scales * student + shifts)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_standardize_logits_needs_two_classes():
    with pytest.raises(UserError, match="at least 2 classes"):
        standardize_logits(tf.zeros([3, 1]))
