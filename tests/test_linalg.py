"""Gradients of sskd_tf.linalg against finite differences, TensorFlow's own SVD
gradient and independent transcriptions of the authors' formulas."""
import numpy as np
import pytest
import tensorflow as tf

import svd_reference as ref
from sskd_tf import linalg

SHAPES = {"tall": (2, 7, 4), "wide": (2, 4, 7), "square": (2, 5, 5)}


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _sign_invariant_loss_np(x, weights, n=2):
    """sum(ws * s) + <wu, U_n U_n^T> + <wv, V_n V_n^T>: independent of singular-vector signs."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    v = np.swapaxes(vt, -1, -2)
    ws, wu, wv = weights
    pu = u[..., :n] @ np.swapaxes(u[..., :n], -1, -2)
    pv = v[..., :n] @ np.swapaxes(v[..., :n], -1, -2)
    return np.sum(ws * s) + np.sum(wu * pu) + np.sum(wv * pv)


def _sign_invariant_loss_tf(x, weights, gradient, n=2):
    s, u, v = linalg.svd(x, gradient)
    ws, wu, wv = weights
    pu = tf.matmul(u[..., :n], u[..., :n], transpose_b=True)
    pv = tf.matmul(v[..., :n], v[..., :n], transpose_b=True)
    return tf.reduce_sum(ws * s) + tf.reduce_sum(wu * pu) + tf.reduce_sum(wv * pv)


def _weights(shape, seed=1):
    b, m, n = shape
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, min(m, n))), rng.normal(size=(b, m, m)), rng.normal(size=(b, n, n))


def _central_differences(fn, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        grad[index] = (fn(plus) - fn(minus)) / (2 * h)
    return grad


def _tape_gradient(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return tape.gradient(value, x).numpy()


def _relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_exact_gradient_matches_finite_differences(kind):
    x = _random(SHAPES[kind])
    weights = _weights(SHAPES[kind])
    analytic = _tape_gradient(lambda t: _sign_invariant_loss_tf(t, weights, "exact"), x)
    numeric = _central_differences(lambda a: _sign_invariant_loss_np(a, weights), x)
    assert _relative_error(analytic, numeric) < 1e-4


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_exact_gradient_matches_tensorflow_svd_gradient(kind):
    x = _random(SHAPES[kind], seed=3)
    b, m, n = SHAPES[kind]
    rng = np.random.default_rng(4)
    ws, wu, wv = rng.normal(size=(b, min(m, n))), rng.normal(size=(b, m, min(m, n))), rng.normal(size=(b, n, min(m, n)))

    def ours(t):
        s, u, v = linalg.svd(t, "exact")
        return tf.reduce_sum(ws * s) + tf.reduce_sum(wu * u) + tf.reduce_sum(wv * v)

    def builtin(t):
        s, u, v = tf.linalg.svd(t, full_matrices=False)
        return tf.reduce_sum(ws * s) + tf.reduce_sum(wu * u) + tf.reduce_sum(wv * v)

    np.testing.assert_allclose(_tape_gradient(ours, x), _tape_gradient(builtin, x), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["tall", "square"])
def test_original_tall_branch_is_twice_the_true_gradient(kind):
    x = _random(SHAPES[kind], seed=5)
    weights = (0.0, 0.0, _weights(SHAPES[kind])[2])
    original = _tape_gradient(lambda t: _sign_invariant_loss_tf(t, weights, "original"), x)
    numeric = _central_differences(lambda a: _sign_invariant_loss_np(a, weights), x)
    np.testing.assert_allclose(original, 2.0 * numeric, rtol=1e-5, atol=1e-7)


def test_original_wide_branch_is_not_proportional_to_the_true_gradient():
    x = _random(SHAPES["wide"], seed=6)
    weights = (0.0, 0.0, _weights(SHAPES["wide"])[2])
    original = _tape_gradient(lambda t: _sign_invariant_loss_tf(t, weights, "original"), x).ravel()
    exact = _tape_gradient(lambda t: _sign_invariant_loss_tf(t, weights, "exact"), x).ravel()
    best_scale = original @ exact / (exact @ exact)
    assert _relative_error(original, best_scale * exact) > 0.05


def _linear_in_v_gradient(x, gradient, dv):
    def loss(t):
        _, _, v = linalg.svd(t, gradient)
        return tf.reduce_sum(dv * v)

    return _tape_gradient(loss, x)


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_original_gradient_matches_transcription(kind):
    x = _random(SHAPES[kind], seed=7)
    s, u, v = (t.numpy() for t in tf.linalg.svd(x, full_matrices=False))
    dv = np.random.default_rng(8).normal(size=v.shape)
    expected = ref.original_gradient(s, u, v, dv)
    np.testing.assert_allclose(_linear_in_v_gradient(x, "original", dv), expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 4, 7), (2, 3, 40), (2, 7, 4)])
def test_eccv_gradient_matches_transcription(shape):
    x = _random(shape, seed=9)
    s, u, v = (t.numpy() for t in tf.linalg.svd(x, full_matrices=False))
    dv = np.random.default_rng(10).normal(size=v.shape)
    expected = ref.eccv_gradient(s, u, v, dv)
    got = _linear_in_v_gradient(x, "eccv", dv)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    if shape[1] >= shape[2]:
        assert not np.any(got), "the 2018 release gives tall maps no gradient"
    else:
        assert np.linalg.norm(got) > 0


def _degenerate_matrices():
    q, _ = np.linalg.qr(_random((6, 6), seed=11))
    repeated = np.stack([q[:, :3] * 2.0, q[:, :3] * [3.0, 3.0, 1.0]])
    rank_one = np.stack([np.outer(np.arange(6.0), np.ones(3)), np.zeros((6, 3))])
    return {"repeated": repeated, "vanishing": rank_one}


@pytest.mark.parametrize("case", ["repeated", "vanishing"])
@pytest.mark.parametrize("transpose", [False, True])
def test_exact_gradient_stays_finite_when_singular_values_degenerate(case, transpose):
    """Finite on the degenerate matrices; on a well-conditioned one in the same batch, the
    gradient it has in a batch of its own (each matrix's loss is its own), not zero."""
    clean = _random((1, 6, 3), seed=13)
    x = np.concatenate([_degenerate_matrices()[case], clean])
    if transpose:
        x, clean = np.swapaxes(x, -1, -2), np.swapaxes(clean, -1, -2)
    weights = _weights(x.shape)
    grad = _tape_gradient(lambda t: _sign_invariant_loss_tf(t, weights, "exact"), x)
    assert np.all(np.isfinite(grad))
    alone = _tape_gradient(lambda t: _sign_invariant_loss_tf(
        t, [w[-1:] for w in weights], "exact"), clean)
    np.testing.assert_allclose(grad[-1:], alone, rtol=1e-10, atol=1e-12)
    assert np.abs(alone).max() > 1e-3


@pytest.mark.parametrize("shape", [(3, 12, 4), (3, 4, 12)])
def test_eid_factors_reconstruct_the_matrix(shape):
    x = tf.constant(_random(shape, seed=12))
    s, u, v = linalg.eid(x)
    reconstructed = tf.matmul(u * s[:, None, :], v, transpose_b=True)
    np.testing.assert_allclose(reconstructed.numpy(), x.numpy(), atol=1e-8)
    np.testing.assert_allclose(s.numpy(), tf.linalg.svd(x, compute_uv=False).numpy(), rtol=1e-8)
    np.testing.assert_allclose(tf.matmul(v, v, transpose_a=True).numpy(), np.eye(min(shape[1:])) * np.ones(shape[:1])[:, None, None], atol=1e-8)


@pytest.mark.parametrize("shape", [(2, 12, 4), (2, 4, 12)])
def test_eid_gradient_is_the_original_formula_at_its_own_factors(shape):
    x = _random(shape, seed=13)
    s, u, v = (t.numpy() for t in linalg.eid(tf.constant(x)))
    dv = np.random.default_rng(14).normal(size=v.shape)

    def loss(t):
        return tf.reduce_sum(dv * linalg.eid(t)[2])

    np.testing.assert_allclose(_tape_gradient(loss, x), ref.original_gradient(s, u, v, dv), rtol=1e-7, atol=1e-9)


def test_eid_square_maps_get_no_gradient_in_faithful_mode_only():
    x = _random((2, 5, 6), seed=15)
    dv = np.random.default_rng(16).normal(size=(2, 6, 5))

    def loss(gradient):
        return lambda t: tf.reduce_sum(dv * linalg.eid(t, gradient)[2])

    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        value = loss("original")(x_t)
    assert tape.gradient(value, x_t) is None
    assert np.linalg.norm(_tape_gradient(loss("exact"), x)) > 0


def test_unknown_gradient_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown SVD gradient 'bogus'; choose one of: original, exact, eccv"):
        linalg.svd(tf.zeros((1, 3, 2)), "bogus")


@pytest.mark.parametrize("shape", [(2, 12, 4), (2, 4, 12)])
def test_eid_exact_gradient_matches_finite_differences_and_original_doubles_it_when_tall(shape):
    """KD-EID (MHGD's `SVD_eid`) on both sides of its square band: the exact option is the
    true gradient of a sign-invariant loss of its leading right vectors; the authors' formula
    is twice it where D <= HW (tall), and their own formula where D > HW (the transcription
    above)."""
    x = _random(shape, seed=17)
    wv = _weights(shape, seed=18)[2]

    def loss(gradient):
        def of(t):
            v = linalg.eid(t, gradient)[2][..., :2]
            return tf.reduce_sum(wv * tf.matmul(v, v, transpose_b=True))
        return of

    numeric = _central_differences(lambda a: _sign_invariant_loss_np(a, (0.0, 0.0, wv)), x)
    assert _relative_error(_tape_gradient(loss("exact"), x), numeric) < 1e-4
    if shape[1] >= shape[2]:
        np.testing.assert_allclose(_tape_gradient(loss("original"), x), 2.0 * numeric, rtol=1e-5,
                                   atol=1e-7)
