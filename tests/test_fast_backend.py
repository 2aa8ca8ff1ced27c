"""The fast decomposition backends of svd_kd_loss: "gram" (linalg.gram_svd: the factors,
loss and gradients of tf.linalg.svd up to its documented sign rule) and "hybrid" (the
loss and gradients of the "linalg_svd" backend); finite on degenerate inputs, in tf.function
and under XLA; and the flag that selects them."""
import copy

import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags  # noqa: F401  (defines the flags of main.py)
from sskd_tf import linalg
from sskd_tf.linalg import dense
from sskd_tf.distill import build_method
from sskd_tf.distill.kd_svd import BACKENDS, svd_kd_loss
from sskd_tf.modes.run_config import config_from_flags

# The resnet32 -> resnet8 taps (32x32x64, 16x16x128, 8x8x256): tall, tall, wide.
RESNET_TAPS = [(32, 32, 64), (16, 16, 128), (8, 8, 256)]
# tall, wide, square and the KD-EID square band.
MATRIX_SHAPES = [(3, 40, 6), (3, 6, 40), (3, 7, 7), (3, 9, 7)]
VARIANTS = ["refined", "eid", "eccv"]


def _maps(taps, batch, seed, relu=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    maps = [rng.normal(size=(batch,) + tap) for tap in taps]
    return [(np.maximum(m, 0.0) if relu else m).astype(dtype) for m in maps]


def _signed(decomposition):
    """`decomposition` with every column pair flipped to the gram backend's sign rule."""
    def decompose(x):
        s, u, v = decomposition(x)
        signs = linalg.column_signs(v)[:, None, :]
        return s, u * signs, v * signs

    return decompose


@pytest.fixture
def svd_with_gram_signs(monkeypatch):
    """Makes backend "linalg_svd" (tf.linalg.svd, and KD-EID's own route) follow the gram
    backend's sign rule, so that the two backends can be compared value for value."""
    monkeypatch.setattr(dense, "_thin_svd", _signed(dense._thin_svd))
    monkeypatch.setattr(dense, "_gram_decomposition", _signed(dense._gram_decomposition))


def _loss_and_grads(student, teacher, variant, gradient, backend):
    student = [tf.Variable(m) for m in student]
    with tf.GradientTape() as tape:
        loss = svd_kd_loss(student, [tf.constant(m) for m in teacher], variant, gradient,
                           backend=backend)
    return loss.numpy(), [g.numpy() for g in tape.gradient(loss, student)]


def _relative(a, b):
    """||a - b|| / ||b||, and 0 when both are zero (e.g. the tall taps of "eccv")."""
    difference = np.linalg.norm(a - b)
    return difference and difference / np.linalg.norm(b)


def _assert_loss_of_svd_backend(backend, variant, relu, seeds):
    """float32 resnet taps: `backend`'s loss within 1e-4 relative of the "linalg_svd" backend's."""
    student = _maps(RESNET_TAPS, batch=3, seed=seeds[0], relu=relu)
    teacher = _maps(RESNET_TAPS, batch=3, seed=seeds[1], relu=relu)
    other = svd_kd_loss(student, teacher, variant, backend=backend).numpy()
    faithful = svd_kd_loss(student, teacher, variant, backend="linalg_svd").numpy()
    assert abs(other - faithful) <= 1e-4 * abs(faithful)


def _assert_gradients_of_svd_backend(backend, variant, gradient, seeds):
    """float64 resnet taps: `backend`'s loss (rtol 1e-9) and student gradients
    (relative 1e-6) equal the "linalg_svd" backend's."""
    student = _maps(RESNET_TAPS, batch=2, seed=seeds[0], relu=False, dtype=np.float64)
    teacher = _maps(RESNET_TAPS, batch=2, seed=seeds[1], relu=False, dtype=np.float64)
    other_loss, other = _loss_and_grads(student, teacher, variant, gradient, backend)
    ref_loss, ref = _loss_and_grads(student, teacher, variant, gradient, "linalg_svd")
    np.testing.assert_allclose(other_loss, ref_loss, rtol=1e-9)
    for got, want in zip(other, ref):
        assert _relative(got, want) < 1e-6


@pytest.mark.parametrize("shape", MATRIX_SHAPES)
def test_factors_are_tf_svd_factors_with_fixed_signs(shape):
    x = tf.constant(np.random.default_rng(0).normal(size=shape))
    s, u, v = linalg.gram_svd(x)
    s_ref, u_ref, v_ref = _signed(dense._thin_svd)(x)
    np.testing.assert_allclose(s.numpy(), s_ref.numpy(), rtol=1e-10)
    np.testing.assert_allclose(u.numpy(), u_ref.numpy(), atol=1e-9)
    np.testing.assert_allclose(v.numpy(), v_ref.numpy(), atol=1e-9)


@pytest.mark.parametrize("shape", MATRIX_SHAPES)
def test_sign_rule_and_consistent_factors(shape):
    x = tf.constant(np.random.default_rng(1).normal(size=shape))
    s, u, v = (t.numpy() for t in linalg.gram_svd(x))
    pivots = np.take_along_axis(v, np.abs(v).argmax(axis=1)[:, None, :], axis=1)
    assert np.all(pivots > 0), "the largest-magnitude entry of every right vector is positive"
    np.testing.assert_allclose(u @ (s[:, :, None] * np.swapaxes(v, 1, 2)), x.numpy(), atol=1e-10)
    assert np.all(np.diff(s, axis=1) <= 1e-12), "singular values descend"


def test_float32_kept_components_as_accurate_as_tf_svd():
    """On non-negative maps of the resnet tap shapes, in float32, the components the
    loss keeps (4) are as close to a float64 SVD as tf.linalg.svd's own are."""
    for fmap in _maps(RESNET_TAPS, batch=4, seed=2):
        x = tf.constant(fmap.reshape(4, -1, fmap.shape[-1]))
        s64, _, v64 = (t.numpy()[..., :4] for t in _signed(dense._thin_svd)(tf.cast(x, tf.float64)))
        s64 = s64[:, :4]
        errors = {}
        for name, decompose in (("gram", linalg.gram_svd), ("linalg_svd", _signed(dense._thin_svd))):
            s, _, v = decompose(x)
            errors[name] = (np.max(np.abs(s.numpy()[:, :4] - s64) / s64[:, :1]),
                            np.max(np.abs(v.numpy()[:, :, :4] - v64)))
        assert errors["gram"][0] < 1e-5 and errors["gram"][1] < 1e-4, errors
        assert errors["gram"][1] < 10 * errors["linalg_svd"][1], errors


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_equals_the_svd_backend_with_the_same_signs(svd_with_gram_signs, variant, relu):
    _assert_loss_of_svd_backend("gram", variant, relu, seeds=(3, 4))


@pytest.mark.parametrize("gradient", ["original", "exact"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_equal_the_svd_backend_with_the_same_signs(svd_with_gram_signs, variant,
                                                             gradient):
    _assert_gradients_of_svd_backend("gram", variant, gradient, seeds=(5, 6))


def test_float32_gradients_close_to_the_svd_backend(svd_with_gram_signs):
    student = _maps(RESNET_TAPS, batch=2, seed=7)
    teacher = _maps(RESNET_TAPS, batch=2, seed=8)
    _, fast = _loss_and_grads(student, teacher, "refined", "original", "gram")
    _, ref = _loss_and_grads(student, teacher, "refined", "original", "linalg_svd")
    for got, want in zip(fast, ref):
        assert _relative(got, want) < 1e-3


def _teacher_relative_signs_agree(teacher):
    """Per sample: do tf.linalg.svd's leading teacher vectors of consecutive taps have
    the same relative signs as under the gram sign rule?"""
    signs = [linalg.column_signs(dense._thin_svd(tf.constant(m.reshape(m.shape[0], -1, m.shape[-1])))[2])
             .numpy()[:, 0] for m in teacher]
    return np.all([a * b > 0 for a, b in zip(signs[1:], signs[:-1])], axis=0)


def test_unpatched_backends_differ_exactly_where_the_teacher_signs_differ():
    """Where the conventions differ (documented in linalg.gram_svd): the loss of one
    sample is the same for both backends iff tf.linalg.svd's teacher vectors carry
    the gram rule's relative signs from tap to tap."""
    student = _maps(RESNET_TAPS, batch=8, seed=9, dtype=np.float64)
    teacher = _maps(RESNET_TAPS, batch=8, seed=12, dtype=np.float64)
    agree = _teacher_relative_signs_agree(teacher)
    assert agree.any() and not agree.all(), "choose seeds that show both cases"
    for sample, same_signs in enumerate(agree):
        one = slice(sample, sample + 1)
        fast, faithful = (svd_kd_loss([m[one] for m in student], [m[one] for m in teacher],
                                      backend=backend).numpy() for backend in ("gram", "linalg_svd"))
        assert np.isclose(fast, faithful, rtol=1e-9) == same_signs


TAPS_OF_DEGENERATE_MAPS = [(4, 4, 3), (2, 2, 6), (2, 2, 6)]


def _degenerate_maps(batch=4):
    student = _maps(TAPS_OF_DEGENERATE_MAPS, batch, seed=11, relu=False, dtype=np.float64)
    student[0][0] = 0.0                            # an all-zero sample
    student[1][:, :, :, :3] = 0.0                  # dead channels
    q, _ = np.linalg.qr(np.random.default_rng(12).normal(size=(16, 16)))
    student[0][1] = (q[:, :3] * 2.0).reshape(4, 4, 3)           # repeated singular values
    student[2][2] = np.ones((2, 2, 6))                          # rank one
    teacher = _maps(TAPS_OF_DEGENERATE_MAPS, batch, seed=13, relu=False, dtype=np.float64)
    teacher[2][3] = 0.0
    return student, teacher


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_hybrid_loss_equals_the_svd_backend(variant, relu):
    _assert_loss_of_svd_backend("hybrid", variant, relu, seeds=(16, 17))


@pytest.mark.parametrize("gradient", ["original", "exact"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_hybrid_gradients_equal_the_svd_backend(variant, gradient):
    _assert_gradients_of_svd_backend("hybrid", variant, gradient, seeds=(18, 19))


@pytest.mark.parametrize("backend", ["gram", "hybrid"])
@pytest.mark.parametrize("gradient", ["original", "exact"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_finite_on_degenerate_inputs(variant, gradient, backend):
    """Finite on the degenerate samples; two well-conditioned samples appended to the batch
    get the gradient they get in a batch of their own, not zero. In the 2018 release the
    NaN guard ties the samples of a batch (the finite ones' gradients are scaled by the
    batch's count of finite ones, per pair of taps), so there they are checked to be
    nonzero only."""
    student, teacher = _degenerate_maps()
    clean_student, clean_teacher = _maps(TAPS_OF_DEGENERATE_MAPS, 2, seed=21, relu=False,
                                         dtype=np.float64), _maps(
        TAPS_OF_DEGENERATE_MAPS, 2, seed=22, relu=False, dtype=np.float64)
    loss, grads = _loss_and_grads([np.concatenate(pair) for pair in zip(student, clean_student)],
                                  [np.concatenate(pair) for pair in zip(teacher, clean_teacher)],
                                  variant, gradient, backend)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert max(np.abs(grad[-2:]).max() for grad in grads) > 1e-6
    if variant == "eccv":
        return
    _, alone = _loss_and_grads(clean_student, clean_teacher, variant, gradient, backend)
    for grad, expected in zip(grads, alone):
        np.testing.assert_allclose(grad[-2:], expected, rtol=1e-7, atol=1e-10)


def test_zero_matrix_factors_are_finite():
    s, u, v = linalg.gram_svd(tf.zeros((2, 6, 3)))
    assert not np.any(s.numpy()) and not np.any(u.numpy())
    np.testing.assert_allclose(np.abs(v.numpy()).sum(axis=1), 1.0)


@pytest.mark.parametrize("jit", [False, True])
def test_in_tf_function(jit):
    student = [tf.constant(m) for m in _maps([(4, 4, 8), (2, 2, 16)], batch=4, seed=14)]
    teacher = [tf.constant(m) for m in _maps([(4, 4, 8), (2, 2, 16)], batch=4, seed=15)]

    def loss_and_grads(student, teacher):
        with tf.GradientTape() as tape:
            tape.watch(student)
            loss = svd_kd_loss(student, teacher, backend="gram")
        return loss, tape.gradient(loss, student)

    eager_loss, eager_grads = loss_and_grads(student, teacher)
    graph_loss, graph_grads = tf.function(loss_and_grads, jit_compile=jit)(student, teacher)
    np.testing.assert_allclose(graph_loss.numpy(), eager_loss.numpy(), rtol=1e-4)
    for got, want in zip(graph_grads, eager_grads):
        assert _relative(got.numpy(), want.numpy()) < 1e-3


@pytest.mark.parametrize("name", ["svd", "eid", "svd_eccv"])
def test_methods_take_the_backend(name):
    student = {"features": [tf.constant(m) for m in _maps([(4, 4, 8), (2, 2, 16)], 2, seed=20)]}
    teacher = {"features": [tf.constant(m) for m in _maps([(4, 4, 8), (2, 2, 16)], 2, seed=21)]}
    variant = {"svd": "refined", "eid": "eid", "svd_eccv": "eccv"}[name]
    for backend in BACKENDS:
        method = build_method(name, backend=backend)
        assert method.options.backend == backend
        method.build({"features": [f.shape for f in student["features"]]},
                     {"features": [f.shape for f in teacher["features"]]})
        (value,) = method(student, teacher, None).values()
        expected = svd_kd_loss(student["features"], teacher["features"], variant, backend=backend)
        np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=1e-6)
    assert build_method(name).options.backend == "linalg_svd"


def test_unknown_backend_is_a_clear_error():
    message = "'lapack'; choose one of: linalg_svd, gram, hybrid, batched"
    with pytest.raises(ValueError, match="svd: backend=" + message):
        build_method("svd", backend="lapack")
    maps = [tf.zeros((1, 2, 2, 2))] * 2
    with pytest.raises(ValueError, match="unknown SVD backend " + message):
        svd_kd_loss(maps, maps, backend="lapack")


@pytest.mark.parametrize("method,expected", [("svd", "hybrid"), ("eid", "hybrid"), ("at", None)])
def test_svd_backend_flag_reaches_the_method_options(method, expected):
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", f"--method={method}", "--svd_backend=hybrid"])
    assert config_from_flags(flag_values).method_options.get("backend") == expected


@pytest.mark.parametrize("name,backend,advised", [
    ("svd", "linalg_svd", True), ("svd", "hybrid", True), ("svd_eccv", "linalg_svd", True),
    ("svd", "gram", False), ("svd_eccv", "gram", False), ("eid", "linalg_svd", False)])
def test_jit_advice_names_the_backends_that_run_tf_linalg_svd(name, backend, advised):
    advice = build_method(name, backend=backend).jit_advice()
    assert bool(advice) == advised
    if advised:
        assert f"--svd_backend={backend}" in advice and "--svd_backend=gram" in advice


def test_methods_without_a_decomposition_give_no_jit_advice():
    assert build_method("at").jit_advice() == ""
