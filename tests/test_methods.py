"""Comparison distillation methods (issue 5): soft_logits, fitnet, at, fsp, rdim,
self_distill. Small random feature maps stand in for the networks' taps."""
import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.distill import METHODS, build_method
from sskd_tf.distill.at import attention_transfer_loss
from sskd_tf.distill.fsp import fsp_loss
from sskd_tf.distill.self_distill import exit_losses
from sskd_tf.distill.soft_logits import soft_logits_loss
from sskd_tf.errors import UserError

TEACHER_METHODS = ["soft_logits", "fitnet", "at", "fsp", "rdim"]
ALL_METHODS = TEACHER_METHODS + ["self_distill"]
SIZES = (8, 4, 2)
TEACHER_WIDTHS = (16, 32, 64)
STUDENT_WIDTHS = (8, 16, 32)
CLASSES = 10
LABELS = tf.constant([1, 2, 3, 4])


def outputs(widths=TEACHER_WIDTHS, batch=4, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "logits": tf.constant(scale * rng.normal(size=(batch, CLASSES)), tf.float32),
        "features": [
            tf.constant(scale * np.abs(rng.normal(size=(batch, s, s, w))), tf.float32)
            for s, w in zip(SIZES, widths)
        ],
    }


def total(terms):
    return float(tf.add_n(list(terms.values())))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(student, teacher, temperature):
    p_t, p_s = softmax(teacher / temperature), softmax(student / temperature)
    return np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1))


def as_np(out):
    return [np.asarray(f, np.float64) for f in out["features"]]


# ----------------------------------------------------------------------- contract


def test_all_methods_registered_with_search_spaces():
    for name in ALL_METHODS:
        assert name in METHODS
        space = METHODS.get(name).search_space(keras_tuner.HyperParameters())
        assert space, name
        build_method(name, **space)


def test_class_attributes_and_defaults():
    soft = build_method("soft_logits").options
    assert (soft.temperature, soft.kd_weight) == (4.0, 0.3)
    assert build_method("soft_logits").task_weight == pytest.approx(0.7)
    assert build_method("fitnet").options.init_epochs == 40
    assert build_method("fitnet", init_epochs=0).options.init_epochs == 0
    fsp = build_method("fsp")
    assert (fsp.options.weight, fsp.options.init_epochs, fsp.gradient_rule) == (1e-3, 40, "sum")
    eccv = build_method("fsp", normalisation="eccv2018")
    assert (eccv.options.weight, eccv.options.init_epochs, eccv.gradient_rule) == (1.0, 0, "clip")
    assert build_method("at").options.beta == 1e3
    self_distill = build_method("self_distill")
    assert not self_distill.needs_teacher and self_distill.task_weight == 1.0
    with pytest.raises(ValueError):
        build_method("fsp", normalisation="other")
    with pytest.raises(ValueError):
        build_method("rdim", projection="other")


def test_options_are_typed_checked_and_named_in_one_line():
    assert build_method("at", beta=2).options.beta == 2.0  # an int where a float is declared
    assert build_method("svd", gradient_rule="sum").gradient_rule == "sum"
    assert build_method("svd").gradient_rule == "clip"
    for options, message in [
            ({"beta": "big"}, "at: beta='big' is not a float"),
            ({"beta": -1.0}, r"at: beta=-1.0 is out of range \(at least 0\)"),
            ({"gradient_rule": "mean"}, "at: gradient_rule='mean'; choose one of: sum, clip"),
            ({"betta": 1.0}, "at takes no betta; its options: beta, clip_scale, gradient_rule")]:
        with pytest.raises(UserError, match=message) as error:
            build_method("at", **options)
        assert "\n" not in str(error.value)


# ------------------------------------------------------------- equal / different


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_zero_when_student_equals_teacher_positive_otherwise(name):
    teacher = outputs()
    assert total(build_method(name)(teacher, teacher, LABELS)) == pytest.approx(0.0, abs=1e-6)
    assert total(build_method(name)(outputs(seed=1), teacher, LABELS)) > 1e-4


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("batch", [1, 4])
def test_finite_on_all_zero_inputs(name, batch):
    zeros = outputs(batch=batch, scale=0.0)
    student = outputs(STUDENT_WIDTHS if name in ("fitnet", "rdim", "at") else TEACHER_WIDTHS,
                      batch=batch, scale=0.0)
    method = build_method(name)
    teacher = None if name == "self_distill" else zeros
    terms = method(student, teacher, LABELS[:batch], training=True)
    assert all(np.isfinite(float(v)) for v in terms.values())
    random_student = outputs(batch=batch)
    terms = build_method(name)(random_student, teacher, LABELS[:batch], training=True)
    assert all(np.isfinite(float(v)) for v in terms.values())


def test_incompatible_taps_are_rejected():
    student, teacher = outputs(seed=1), outputs()
    rotated = student["features"][1:] + student["features"][:1]
    shifted = {"logits": student["logits"], "features": rotated}
    for name in ("fitnet", "at", "rdim"):
        with pytest.raises(ValueError):
            build_method(name)(shifted, teacher, LABELS)
    with pytest.raises(ValueError):
        build_method("fsp")(outputs(STUDENT_WIDTHS), teacher, LABELS)


# ------------------------------------------------------------------------ gradients


@pytest.mark.parametrize(
    "name, student_widths",
    [("soft_logits", TEACHER_WIDTHS), ("fitnet", STUDENT_WIDTHS), ("at", STUDENT_WIDTHS),
     ("fsp", TEACHER_WIDTHS), ("rdim", STUDENT_WIDTHS)],
)
def test_gradients_reach_student_and_method_never_teacher(name, student_widths):
    student, teacher = outputs(student_widths, seed=1), outputs()
    method = build_method(name)
    watched = student["features"] + [student["logits"]]
    teacher_tensors = teacher["features"] + [teacher["logits"]]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(watched + teacher_tensors)
        loss = tf.add_n(list(method(student, teacher, LABELS, training=True).values()))
    assert all(g is None for g in tape.gradient(loss, teacher_tensors))
    student_grads = tape.gradient(loss, watched)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in student_grads)
    for variable, grad in zip(method.trainable_variables,
                              tape.gradient(loss, method.trainable_variables)):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, variable.path
    if name in ("fitnet", "rdim"):
        assert len(method.trainable_variables) == 3


# ------------------------------------------------------------- numpy transcriptions


@pytest.mark.parametrize("t_squared", [False, True])
def test_soft_logits_matches_numpy(t_squared):
    s, t = outputs(seed=1)["logits"], outputs()["logits"]
    expected = np_kl(np.asarray(s, np.float64), np.asarray(t, np.float64), 4.0)
    expected *= 16.0 if t_squared else 1.0
    assert float(soft_logits_loss(s, t, 4.0, t_squared)) == pytest.approx(expected, rel=1e-4)
    method = build_method("soft_logits", scale_by_t_squared=t_squared)
    terms = method({"logits": s}, {"logits": t}, LABELS)
    assert float(terms["soft_logits"]) == pytest.approx(0.3 * expected, rel=1e-4)


def test_fitnet_matches_numpy_with_regressors():
    student, teacher = outputs(STUDENT_WIDTHS, seed=1), outputs()
    method = build_method("fitnet", weight=2.0)
    loss = float(method(student, teacher, LABELS)["hint"])
    expected = sum(
        np.mean((s @ np.asarray(r.kernel, np.float64)[0, 0] - t) ** 2)
        for s, t, r in zip(as_np(student), as_np(teacher), method.regressors)
    )
    assert loss == pytest.approx(2.0 * expected, rel=1e-4)


def test_at_matches_numpy():
    student, teacher = outputs(STUDENT_WIDTHS, seed=1), outputs()

    def attention(f):
        q = np.mean(f**2, axis=-1).reshape(f.shape[0], -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    expected = 1e3 / 2 * sum(
        np.mean((attention(s) - attention(t)) ** 2)
        for s, t in zip(as_np(student), as_np(teacher))
    )
    loss = attention_transfer_loss(student["features"], teacher["features"], 1e3)
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def np_fsp(top, bottom):
    b, h, w, d = top.shape
    r = h // bottom.shape[1]
    pooled = top.reshape(b, h // r, r, w // r, r, d).max(axis=(2, 4))
    hb, wb = bottom.shape[1:3]
    return np.einsum("bpi,bpj->bij", pooled.reshape(b, -1, d),
                     bottom.reshape(b, -1, bottom.shape[-1])) / (hb * wb)


@pytest.mark.parametrize("normalisation", ["kd_methods", "eccv2018"])
def test_fsp_matches_numpy(normalisation):
    student, teacher = as_np(outputs(seed=1)), as_np(outputs())
    per_pair = [
        np.mean(np.sum((np_fsp(t[i], t[i + 1]) - np_fsp(s[i], s[i + 1])) ** 2, axis=(1, 2)) / 2)
        for s, t in [(student, teacher)] for i in range(2)
    ]
    expected = sum(per_pair)
    if normalisation == "eccv2018":
        expected /= 16 * 32 + 32 * 64
    loss = fsp_loss(outputs(seed=1)["features"], outputs()["features"], normalisation)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    method = build_method("fsp", normalisation=normalisation)
    weight = 1e-3 if normalisation == "kd_methods" else 1.0
    terms = method(outputs(seed=1), outputs(), LABELS)
    assert float(terms["fsp"]) == pytest.approx(weight * expected, rel=1e-4)


def test_rdim_random_projection_matches_numpy_and_is_orthonormal():
    student, teacher = outputs(STUDENT_WIDTHS, seed=1), outputs()
    method = build_method("rdim", seed=3)
    loss = float(method(student, teacher, LABELS)["rdim"])
    expected = 0.0
    for s, t, r, k in zip(as_np(student), as_np(teacher), method.regressors, method.projections):
        k = np.asarray(k, np.float64)
        assert k.shape == (t.shape[-1], t.shape[-1] // 4)
        np.testing.assert_allclose(k.T @ k, np.eye(k.shape[1]), atol=1e-5)
        s = s @ np.asarray(r.kernel, np.float64)[0, 0]
        expected += np.mean(((s - t) @ k) ** 2)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert len(method.non_trainable_weights) == 3
    assert build_method("rdim", dim=5).subspace_size(64) == 5


def test_self_distill_exit_losses_match_numpy():
    rng = np.random.default_rng(4)
    logits, deepest = rng.normal(size=(4, CLASSES)), rng.normal(size=(4, CLASSES))
    feature, deepest_feature = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    labels = np.array([0, 3, 5, 9])
    tensors = [tf.constant(x, tf.float32) for x in (logits, feature, deepest, deepest_feature)]
    ce, kd, hint = exit_losses(*tensors, tf.constant(labels), 3.0)
    expected_ce = -np.mean(np.log(softmax(logits)[np.arange(4), labels]))
    assert float(ce) == pytest.approx(expected_ce, rel=1e-4)
    assert float(kd) == pytest.approx(np_kl(logits, deepest, 3.0), rel=1e-4)
    expected_hint = np.mean(np.sum((feature - deepest_feature) ** 2, axis=-1))
    assert float(hint) == pytest.approx(expected_hint, rel=1e-4)
    ce_one_hot, _, _ = exit_losses(*tensors, tf.one_hot(labels, CLASSES), 3.0)
    assert float(ce_one_hot) == pytest.approx(expected_ce, rel=1e-4)


# ------------------------------------------------------------------------ rdim pca


def test_rdim_pca_spans_teacher_top_principal_directions():
    rng = np.random.default_rng(5)
    width, dim = 16, 3
    basis = np.linalg.qr(rng.normal(size=(width, dim)))[0]  # known subspace [16, 3]
    scales = np.array([5.0, 3.0, 2.0])

    def teacher(images, training=False):
        noise = 0.01 * rng.normal(size=images.shape[:3] + (width,))
        return {"features": [tf.constant((images * scales) @ basis.T + noise, tf.float32)]}

    batches = [(rng.normal(size=(8, 4, 4, dim)), np.zeros(8)) for _ in range(5)]
    student = {"features": [tf.zeros((2, 4, 4, 8))]}
    teacher_out = {"features": [tf.zeros((2, 4, 4, width))]}

    for build_first in (True, False):
        method = build_method("rdim", projection="pca", dim=dim)
        if build_first:
            method(student, teacher_out, None)
        method.prepare(teacher, batches)
        if not build_first:
            method(student, teacher_out, None)
        k = np.asarray(method.projections[0], np.float64)
        np.testing.assert_allclose(k.T @ k, np.eye(dim), atol=1e-5)
        np.testing.assert_allclose(k @ k.T, basis @ basis.T, atol=1e-3)


# -------------------------------------------------------------------- self_distill


def test_self_distill_exits_and_head_gradients():
    student = outputs(STUDENT_WIDTHS, seed=2)
    method = build_method("self_distill")
    watched = student["features"] + [student["logits"]]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(watched)
        terms = method(student, None, LABELS, training=True)
        loss = tf.add_n(list(terms.values()))
        teaching = tf.add_n([v for k, v in terms.items() if not k.endswith("_ce")])
    assert sorted(terms) == sorted(
        f"exit_{i}_{t}" for i in range(2) for t in ("ce", "kd", "hint"))
    exits = method.exit_logits(student)
    assert [tuple(e.shape) for e in exits] == [(4, CLASSES)] * 3
    assert exits[-1] is student["logits"]
    grads = tape.gradient(loss, method.trainable_variables)
    assert len(method.trainable_variables) > 0
    assert all(g is not None for g in grads)
    for head in method.heads:
        head_grads = tape.gradient(loss, head.trainable_variables)
        assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in head_grads)
    # the deepest exit teaches: no gradient from the distillation terms into it
    assert tape.gradient(teaching, student["logits"]) is None
    assert tape.gradient(teaching, student["features"][-1]) is None
    assert tape.gradient(loss, student["features"][0]) is not None


def test_self_distill_head_flops_and_exit_flops():
    method = build_method("self_distill")
    student = {"logits": tf.zeros((1, 3)),
               "features": [tf.zeros((1, 4, 4, 2)), tf.zeros((1, 2, 2, 4))]}
    method.exit_logits(student)
    # attention: dw3x3/2 (2x2 out) 72 + pw 16 + dw3x3 72 + pw 16 = 176 multiply-adds;
    # bottleneck: dw3x3/2 72 + pw 16 + dw3x3 72 + pw 2->4 32 = 192; dense 4x3 = 12
    assert method.head_flops() == [2 * (176 + 192 + 12)]

    inputs = keras.Input((8, 8, 3))
    tap0 = keras.layers.Conv2D(2, 3, strides=2, padding="same")(inputs)
    tap1 = keras.layers.Conv2D(4, 3, strides=2, padding="same")(tap0)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(tap1))
    model = keras.Model(inputs, {"logits": logits, "features": [tap0, tap1]})

    method = build_method("self_distill")
    # count_flops: tap0 conv 4*4*2*3*9 = 864 multiply-adds; tap1 conv 2*2*4*2*9 = 288; dense 12
    flops = method.exit_flops(model)
    assert flops == [2 * 864 + method.head_flops()[0], 2 * (864 + 288 + 12)]
