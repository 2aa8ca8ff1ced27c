"""svd_kd_loss: values and gradients against independent transcriptions of the
authors' code, finite differences, degenerate inputs and API contracts."""
import numpy as np
import pytest
import tensorflow as tf

import svd_reference as ref
from sskd_tf import linalg
from sskd_tf.distill import build_method
from sskd_tf.distill import kd_svd
from sskd_tf.distill.kd_svd import svd_kd_loss

# tall (16x3), wide (4x6), wide (1x12): both branches of every gradient.
TAPS = [(4, 4, 3), (2, 2, 6), (1, 1, 12)]
TALL_TAPS = [(4, 4, 3), (3, 3, 4), (3, 3, 2)]
VARIANTS = ["refined", "eid", "eccv"]


def _maps(taps, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch,) + tap) for tap in taps]


def _loss_and_grads(student, teacher, variant, gradient):
    student = [tf.Variable(s) for s in student]
    teacher = [tf.Variable(t) for t in teacher]
    with tf.GradientTape(persistent=True) as tape:
        loss = svd_kd_loss(student, teacher, variant, gradient)
    return loss, tape.gradient(loss, student), tape.gradient(loss, teacher)


def _matrices(fmap):
    return fmap.reshape(fmap.shape[0], -1, fmap.shape[-1])


def _np_decompose(fmap, variant):
    decompose = linalg.svd if variant == "refined" else linalg.eid
    s, _, v = decompose(tf.constant(_matrices(fmap)))
    return s.numpy(), v.numpy()


@pytest.mark.parametrize("variant", ["refined", "eid"])
def test_refined_loss_value_matches_transcription(variant):
    student, teacher = _maps(TAPS, seed=1), _maps(TAPS, seed=2)
    expected = ref.refined_loss([_np_decompose(s, variant) for s in student],
                                [_np_decompose(t, variant) for t in teacher])
    got = svd_kd_loss([tf.constant(s) for s in student], [tf.constant(t) for t in teacher], variant)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_eccv_loss_value_matches_transcription():
    student, teacher = _maps(TAPS, seed=3), _maps(TAPS, seed=4)

    def kept(fmap):
        s, _, v = (t.numpy() for t in tf.linalg.svd(_matrices(fmap), full_matrices=False))
        return s[:, :2], v[:, :, :2]

    expected = ref.eccv_loss([kept(s)[1] for s in student], [kept(t) for t in teacher])
    got = svd_kd_loss([tf.constant(s) for s in student], [tf.constant(t) for t in teacher], "eccv")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def _student_gradient_by_transcription(student, teacher, variant):
    """dL/dX for every student map: dL/dV by autodiff of the loss written on the
    decomposition, then the authors' SVD gradient from the numpy transcription."""
    teacher_parts = []
    for t in teacher:
        s, _, v = linalg.svd(tf.constant(_matrices(t)))
        teacher_parts.append((s, v))
    decompositions = [[x.numpy() for x in tf.linalg.svd(_matrices(s), full_matrices=False)] for s in student]
    raw_v = [tf.Variable(v) for _, _, v in decompositions]
    with tf.GradientTape() as tape:
        if variant == "refined":
            s_vs = [kd_svd.leading_components(s, v, min(4, v.shape[-1]))[1]
                    for (s, _, _), v in zip(decompositions, raw_v)]
            t_parts = [kd_svd.leading_components(s, v, 1) for s, v in teacher_parts]
            loss = kd_svd.refined_loss_from_components(s_vs, [p[0] for p in t_parts], [p[1] for p in t_parts])
        else:
            s_vs = [v[:, :, :2] for v in raw_v]
            loss = kd_svd.eccv_loss_from_components(
                s_vs, [s[:, :2] for s, _ in teacher_parts], [v[:, :, :2] for _, v in teacher_parts])
    dvs = tape.gradient(loss, raw_v)
    formula = ref.original_gradient if variant == "refined" else ref.eccv_gradient
    return [formula(s, u, v, dv.numpy()).reshape(x.shape)
            for (s, u, v), dv, x in zip(decompositions, dvs, student)]


@pytest.mark.parametrize("variant", ["refined", "eccv"])
def test_faithful_student_gradients_match_transcription(variant):
    student, teacher = _maps(TAPS, seed=5), _maps(TAPS, seed=6)
    _, grads, _ = _loss_and_grads(student, teacher, variant, "original")
    expected = _student_gradient_by_transcription(student, teacher, variant)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("variant", ["refined", "eid"])
def test_exact_mode_matches_finite_differences_on_the_whole_loss(variant):
    student, teacher = _maps(TAPS, batch=2, seed=7), _maps(TAPS, batch=2, seed=8)
    teacher_t = [tf.constant(t) for t in teacher]
    _, grads, _ = _loss_and_grads(student, teacher, variant, "exact")

    def loss_of(maps):
        return svd_kd_loss([tf.constant(m) for m in maps], teacher_t, variant, "exact").numpy()

    h = 1e-6
    for tap, grad in enumerate(grads):
        numeric = np.zeros_like(student[tap])
        for index in np.ndindex(student[tap].shape):
            plus = [m.copy() for m in student]
            minus = [m.copy() for m in student]
            plus[tap][index] += h
            minus[tap][index] -= h
            numeric[index] = (loss_of(plus) - loss_of(minus)) / (2 * h)
        assert np.linalg.norm(grad.numpy() - numeric) / np.linalg.norm(numeric) < 1e-4


def test_faithful_gradient_is_twice_the_exact_one_when_every_tap_is_tall():
    student, teacher = _maps(TALL_TAPS, seed=9), _maps(TALL_TAPS, seed=10)
    _, original, _ = _loss_and_grads(student, teacher, "refined", "original")
    _, exact, _ = _loss_and_grads(student, teacher, "refined", "exact")
    for o, e in zip(original, exact):
        np.testing.assert_allclose(o.numpy(), 2.0 * e.numpy(), rtol=1e-6, atol=1e-10)


def _degenerate_student():
    maps = _maps(TAPS, batch=4, seed=11)
    maps[0][0] = 0.0                      # an all-zero sample
    maps[1][:, :, :, :3] = 0.0            # dead channels
    q, _ = np.linalg.qr(np.random.default_rng(12).normal(size=(16, 16)))
    maps[0][1] = (q[:, :3] * 2.0).reshape(4, 4, 3)   # repeated singular values
    return maps


@pytest.mark.parametrize("gradient", ["original", "exact"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_finite_loss_and_gradients_on_degenerate_inputs(variant, gradient):
    """Finite on degenerate samples; the samples left intact (2, 3: their dead channels
    aside) get the gradient they get in a batch of their own, not zero. In the 2018 release
    the NaN guard ties the samples of a batch (the finite ones' gradients are scaled by the
    batch's count of finite ones, per pair of taps), so there they are checked to be
    nonzero only."""
    teacher = _maps(TAPS, batch=4, seed=13)
    teacher[2][2] = 0.0
    student = _degenerate_student()
    loss, grads, _ = _loss_and_grads(student, teacher, variant, gradient)
    assert np.isfinite(loss.numpy())
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy()))
    assert max(np.abs(grad.numpy()[2:]).max() for grad in grads) > 1e-6
    if variant == "eccv":
        return
    _, alone, _ = _loss_and_grads([m[2:] for m in student], [t[2:] for t in teacher], variant,
                                  gradient)
    for grad, expected in zip(grads, alone):
        np.testing.assert_allclose(grad.numpy()[2:], expected.numpy(), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_of_one(variant):
    loss, grads, _ = _loss_and_grads(_maps(TAPS, batch=1, seed=14), _maps(TAPS, batch=1, seed=15), variant, "original")
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def _components(seed, n_student=4):
    rng = np.random.default_rng(seed)
    student_vs = [tf.constant(rng.normal(size=(3, d, n_student))) for d in (5, 7, 4)]
    teacher_ss = [tf.constant(np.abs(rng.normal(size=(3, 2)))) for _ in range(3)]
    teacher_vs = [tf.constant(rng.normal(size=(3, d, 2))) for d in (5, 7, 4)]
    return student_vs, teacher_ss, teacher_vs


def test_refined_loss_is_unchanged_when_student_vectors_flip_sign():
    student_vs, teacher_ss, teacher_vs = _components(16)
    flips = np.random.default_rng(17)
    flipped = [v * np.sign(flips.normal(size=(3, 1, 4))) for v in student_vs]
    np.testing.assert_allclose(
        kd_svd.refined_loss_from_components(flipped, teacher_ss, teacher_vs).numpy(),
        kd_svd.refined_loss_from_components(student_vs, teacher_ss, teacher_vs).numpy(), rtol=1e-12)


def test_eccv_loss_is_unchanged_when_every_student_vector_flips_sign():
    """The 2018 release aligns the teacher to the student, so only a flip of every
    tap at once leaves its loss unchanged (a per-tap flip changes it: documented)."""
    student_vs, teacher_ss, teacher_vs = _components(18, n_student=2)
    base = kd_svd.eccv_loss_from_components(student_vs, teacher_ss, teacher_vs).numpy()
    flipped = kd_svd.eccv_loss_from_components([-v for v in student_vs], teacher_ss, teacher_vs).numpy()
    np.testing.assert_allclose(flipped, base, rtol=1e-12)
    one_tap = [-student_vs[0]] + student_vs[1:]
    assert not np.isclose(kd_svd.eccv_loss_from_components(one_tap, teacher_ss, teacher_vs).numpy(), base)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_the_student_only(variant):
    _, student_grads, teacher_grads = _loss_and_grads(_maps(TAPS, seed=19), _maps(TAPS, seed=20), variant, "original")
    assert all(g is None for g in teacher_grads)
    assert sum(np.linalg.norm(g.numpy()) for g in student_grads) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_mode_equals_eager(variant):
    student = [tf.constant(m, tf.float32) for m in _maps(TAPS, batch=8, seed=21)]
    teacher = [tf.constant(m, tf.float32) for m in _maps(TAPS, batch=8, seed=22)]
    eager = svd_kd_loss(student, teacher, variant)
    graph = tf.function(lambda s, t: svd_kd_loss(s, t, variant))(student, teacher)
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-5)


def test_mismatched_tap_is_reported_before_any_svd(monkeypatch):
    def no_svd(*args, **kwargs):
        raise AssertionError("an SVD ran before the shapes were checked")

    monkeypatch.setattr(linalg, "decompose", no_svd)
    student = [tf.zeros((2, 4, 4, 3)), tf.zeros((2, 2, 2, 8))]
    teacher = [tf.zeros((2, 4, 4, 3)), tf.zeros((2, 2, 2, 6))]
    with pytest.raises(ValueError, match=r"tap 1: student feature map \(2, 2, 8\) and teacher feature map \(2, 2, 6\)"):
        svd_kd_loss(student, teacher)


@pytest.mark.parametrize("kwargs,message", [
    ({"variant": "pca"}, "unknown KD-SVD variant 'pca'; choose one of: refined, eid, eccv"),
    ({"gradient": "eccv"}, "unknown SVD gradient 'eccv'; choose one of: original, exact"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    maps = [tf.zeros((1, 2, 2, 2))] * 2
    with pytest.raises(ValueError, match=message):
        svd_kd_loss(maps, maps, **kwargs)


@pytest.mark.parametrize("option", [{"teacher_components": 0}, {"student_extra_components": -1},
                                    {"rbf_width": 0.0}, {"weight": -1.0}])
def test_out_of_range_method_options_are_clear_errors(option):
    name, value = next(iter(option.items()))
    with pytest.raises(ValueError, match=f"svd: {name}={value} is out of range"):
        build_method("svd", **option)
