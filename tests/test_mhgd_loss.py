"""MHGD's mathematics (sskd_tf/distill/mhgd.py) against numpy transcriptions of
KD_methods_with_TF `nets/Relation.py` and `nets/SVP.py`, in float64, on the authors' ResNet
taps [4, 32, 32, 64] and [4, 16, 16, 128] (tall: D <= HW) and [4, 8, 8, 256] (wide)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_reference as kref
import svd_reference as ref
from sskd_tf.distill import mhgd
from sskd_tf.errors import UserError

SHAPES = [(4, 32, 32, 64), (4, 16, 16, 128), (4, 8, 8, 256)]
WIDTHS = tuple(shape[-1] for shape in SHAPES)
HEADS = 8
BATCH = SHAPES[0][0]
# Central differences along unit directions of whole maps (norm ~300): a step of this norm
# keeps the Gram eigensolver's rounding (~1e-13 on the vectors) far below the signal.
MAP_STEP = 1e-3
# Along unit directions of a weight: the losses are O(1), so the rounding of a difference
# quotient is ~1e-15 / step.
WEIGHT_STEP = 1e-5


# ------------------------------------------------------------------ numpy transcriptions


def eid_reference(feature_map):
    """`SVD_eid` outside its square band, every component: (s, u, v). The eigensolver calls
    are the authors' own (`tf.linalg.eigh`, `tf.linalg.svd` of the Gram matrix), whose signs
    the loss depends on; everything around them is numpy."""
    b, h, w, d = feature_map.shape
    x = feature_map.reshape(b, h * w, d)
    if h * w < d:
        u = tf.linalg.svd(np.stack([m @ m.T for m in x]))[1].numpy()
        v = x.transpose(0, 2, 1) @ u
        s = np.linalg.norm(v, axis=1)
        return s, u, ref.nan_to_zero(v / s[:, None, :])
    v = tf.linalg.eigh(np.stack([m.T @ m for m in x]))[1].numpy()[:, :, ::-1]
    u = x @ v
    s = np.linalg.norm(u, axis=1)
    return s, ref.nan_to_zero(u / s[:, None, :]), v


def kept_vectors(feature_map, n):
    return ref.l2_normalize(eid_reference(feature_map)[2][:, :, :n], 1)


def align_reference(student_v, teacher_v):
    """`Align_rsv` for one teacher vector: [B, D, 4], [B, D] -> [B, D]."""
    out = np.zeros_like(teacher_v)
    for b in range(len(out)):
        cosine = student_v[b].T @ teacher_v[b]
        for j in range(len(cosine)):
            if abs(cosine[j]) == np.max(np.abs(cosine)):
                out[b] += np.sign(cosine[j]) * student_v[b, :, j]
    return out


def teacher_vectors_reference(teacher_maps):
    return [kept_vectors(t, 1)[:, :, 0] for t in teacher_maps]


def student_vectors_reference(student_maps, teachers):
    return [align_reference(kept_vectors(s, 4), t) for s, t in zip(student_maps, teachers)]


def norm_reference(x, params, name, training):
    gamma, beta = params[f"{name}/gamma"], params[f"{name}/beta"]
    if training:
        return kref.batch_norm(x, gamma, beta)
    return kref.batch_norm(x, gamma, beta, params[f"{name}/moving_mean"], params[f"{name}/moving_variance"])


def attention_reference(senders, receivers, params, pair, training):
    """`Attention_head`: the fc outputs read as [..., B, D2, heads], G[h] = S[.., h] R[.., h]^T.
    Leading dimensions of the senders (inference mode only) are evaluated independently."""
    def heads(x, side):
        z = np.tensordot(x, params[f"attention{pair}/{side}/kernel"], axes=1)
        z = norm_reference(z, params, f"attention{pair}/{side}_norm", training)
        return z.reshape(z.shape[:-1] + (-1, HEADS))

    sent, received = heads(senders, "sender"), heads(receivers, "receiver")
    return np.stack([sent[..., h] @ received[..., h].T for h in range(HEADS)], axis=-3)


def kl_rows_reference(x, y):
    """`kld_loss` before its sum: one term per head and sender sample, [..., heads, B]."""
    return np.sum(kref.softmax(x) * (kref.log_softmax(x) - kref.log_softmax(y)), axis=-1)


def pair_rows_reference(student_vectors, teacher_vectors, params, pair, teacher_params=None):
    """teacher_params: the attention weights of the teacher's side, if not `params`."""
    g_s = attention_reference(student_vectors[pair], student_vectors[pair - 1], params, pair, False)
    g_t = attention_reference(teacher_vectors[pair], teacher_vectors[pair - 1], teacher_params or params,
                              pair, False)
    return kl_rows_reference(np.tanh(g_s), np.tanh(g_t))


def transfer_reference(student_vectors, teacher_vectors, params, teacher_params=None):
    return sum(np.sum(pair_rows_reference(student_vectors, teacher_vectors, params, pair, teacher_params))
               for pair in range(1, len(student_vectors)))


def estimation_reference(teacher_vectors, params, masks):
    """`Estimator` and the 'MHA_loss' terms: the heads' mixed rows concatenated head-major."""
    total = 0.0
    for pair in range(1, len(teacher_vectors)):
        previous, target = teacher_vectors[pair - 1], teacher_vectors[pair]
        weights = kref.softmax(attention_reference(target, previous, params, pair, True)) * masks[pair - 1]
        hidden = previous @ params[f"estimator{pair}/hidden/kernel"]
        hidden = np.maximum(norm_reference(hidden, params, f"estimator{pair}/hidden_norm", True), 0.0)
        mixed = np.concatenate([weights[h] @ hidden for h in range(HEADS)], axis=1)
        estimate = mixed @ params[f"estimator{pair}/estimate/kernel"] + params[f"estimator{pair}/estimate/bias"]
        total += np.mean(1.0 - np.sum(ref.l2_normalize(estimate, 1) * target, axis=1))
    return total


# ------------------------------------------------------------------ fixtures


def _maps(seed, relu=True):
    """Random maps of the authors' tap shapes: post-ReLU, or signed."""
    rng = np.random.default_rng(seed)
    return [np.maximum(rng.normal(size=shape), 0.0) if relu else rng.normal(size=shape) for shape in SHAPES]


def _unit_vectors(seed):
    rng = np.random.default_rng(seed)
    return [ref.l2_normalize(rng.normal(size=(BATCH, width)), 1) for width in WIDTHS]


def _graph(seed, mask_seed=None):
    """A float64 graph with every weight drawn from `seed` (the BN parameters and moving
    statistics not the initial ones) and head-drop masks from `mask_seed`."""
    return _draw(mhgd.MultiHeadGraph(WIDTHS, seed=mask_seed, dtype="float64"), seed)


def _draw(graph, seed):
    """Every weight of `graph` drawn from `seed`."""
    rng = np.random.default_rng(seed)
    draws = {"kernel": lambda n: rng.normal(0.0, np.sqrt(2.0 / n[-1]), n), "gamma": lambda n: rng.uniform(0.5, 1.5, n), "beta": lambda n: rng.normal(0.0, 0.1, n),
             "bias": lambda n: rng.normal(0.0, 0.1, n), "moving_mean": lambda n: rng.normal(0.0, 0.02, n),
             "moving_variance": lambda n: rng.uniform(0.02, 0.08, n)}
    for weight in graph.weights:
        kind = weight.path.split("/")[-1]
        if kind in draws:
            weight.assign(draws[kind](weight.shape))
    return graph


def _params(graph):
    return {weight.path: weight.numpy() for weight in graph.weights}


def _perturbed(params, path, direction, t):
    return {**params, path: params[path] + t * direction}


def _check_weight_gradients(weights, gradients, params, reference_of_params, seed, vanishing=()):
    """Each weight's gradient against the central difference of the reference along a random
    direction of that weight; the paths in `vanishing` must have none."""
    for weight, gradient, direction in zip(weights, gradients, kref.directions(weights, seed)):
        expected = kref.central_difference(
            lambda t: reference_of_params(_perturbed(params, weight.path, direction, t)), WEIGHT_STEP)
        got = np.sum(gradient.numpy() * direction)
        if weight.path in vanishing:
            assert abs(got) < 1e-12 and abs(expected) < 1e-8, weight.path
            continue
        assert abs(expected) > 1e-8, weight.path
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9, err_msg=weight.path)


# ------------------------------------------------------------------ decomposition and alignment


def test_stage_vectors_are_the_authors_leading_vectors_aligned_to_the_teacher():
    student_maps, teacher_maps = _maps(1, relu=False), _maps(2)
    students, teachers = mhgd.stage_vectors([tf.constant(m) for m in student_maps],
                                            [tf.constant(m) for m in teacher_maps])
    expected_teachers = teacher_vectors_reference(teacher_maps)
    expected_students = student_vectors_reference(student_maps, expected_teachers)
    for got, expected in zip(teachers + students, expected_teachers + expected_students):
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    # The alignment has work to do: it picks other vectors than the first, and flips signs.
    cosines = np.stack([np.einsum("bdn,bd->bn", kept_vectors(s, 4), t)
                        for s, t in zip(student_maps, expected_teachers)])
    picks = np.argmax(np.abs(cosines), axis=-1)
    assert np.any(picks > 0)
    assert len(set(np.sign(np.take_along_axis(cosines, picks[..., None], -1)).ravel())) == 2


def test_transfer_loss_from_maps_with_the_authors_gradient_in_both_regimes():
    student_maps, teacher_maps = _maps(3), _maps(4)
    graph = _graph(5)
    params = _params(graph)
    students = [tf.Variable(m) for m in student_maps]
    teachers = [tf.Variable(m) for m in teacher_maps]
    with tf.GradientTape(persistent=True) as tape:
        loss = mhgd.mhgd_transfer_loss(students, teachers, graph)
    student_grads = tape.gradient(loss, students)
    assert all(g is None for g in tape.gradient(loss, teachers))
    expected_teachers = teacher_vectors_reference(teacher_maps)
    students_v = student_vectors_reference(student_maps, expected_teachers)
    np.testing.assert_allclose(loss.numpy(), transfer_reference(students_v, expected_teachers, params),
                               rtol=1e-9)

    def derivative_along(stage, direction):
        """The true derivative of the loss along `direction` of one student map."""
        def along(t):
            moved = list(students_v)
            moved[stage] = student_vectors_reference([student_maps[stage] + t * direction],
                                                     [expected_teachers[stage]])[0]
            return transfer_reference(moved, expected_teachers, params)

        return kref.central_difference(along, MAP_STEP)

    # Tall taps (D <= HW): the authors' gradient is twice the true one.
    for stage in (0, 1):
        direction = kref.directions([student_maps[stage]], seed=stage)[0]
        analytic = derivative_along(stage, direction)
        assert abs(analytic) > 1e-9
        np.testing.assert_allclose(np.sum(student_grads[stage].numpy() * direction), 2.0 * analytic, rtol=1e-5)

    # The wide tap (D > HW): `gradient_svd`'s own formula on dV, the true gradient of the loss
    # with respect to the kept, aligned vector carried back through `Align_rsv` and the
    # normalisation (d(v/|v|) = (I - v v^T) dv at unit v) to its column. The last tap only
    # sends, and on the moving statistics a sample's sender vector enters only its own rows:
    # one central difference per coordinate serves all samples at once.
    coordinates = np.eye(WIDTHS[2])[:, None, :]

    def rows_along(t):
        moved = students_v[:2] + [students_v[2] + t * coordinates]
        return pair_rows_reference(moved, expected_teachers, params, 2).sum(axis=-2)

    d_aligned = kref.central_difference(rows_along).T
    s, u, v = eid_reference(student_maps[2])
    cosine = np.einsum("bdn,bd->bn", v[:, :, :4], expected_teachers[2])
    dv = np.zeros_like(v)
    for b, column in enumerate(np.argmax(np.abs(cosine), axis=1)):
        vector = v[b, :, column]
        dv[b, :, column] = np.sign(cosine[b, column]) * (d_aligned[b] - vector * (vector @ d_aligned[b]))
    expected = ref.original_gradient(s, u, v, dv).reshape(SHAPES[2])
    np.testing.assert_allclose(student_grads[2].numpy(), expected, rtol=1e-5, atol=1e-5 * np.max(np.abs(expected)))
    # ... which is neither the true gradient nor twice it.
    direction = kref.directions([student_maps[2]], seed=9)[0]
    ratio = np.sum(student_grads[2].numpy() * direction) / derivative_along(2, direction)
    assert abs(ratio - 2.0) > 0.01 and abs(ratio - 1.0) > 0.01


# ------------------------------------------------------------------ the attention network


def test_transfer_loss_value_and_gradients_on_the_moving_statistics():
    graph = _graph(6)
    params = _params(graph)
    teachers = _unit_vectors(7)
    students = [ref.l2_normalize(t + 0.3 * n, 1) for t, n in zip(teachers, _unit_vectors(8))]
    student_vars = [tf.Variable(v) for v in students]
    teacher_vars = [tf.Variable(v) for v in teachers]
    with tf.GradientTape(persistent=True) as tape:
        loss = graph.transfer_loss(student_vars, teacher_vars)
    np.testing.assert_allclose(loss.numpy(), transfer_reference(students, teachers, params), rtol=1e-10)
    assert all(g is None for g in tape.gradient(loss, teacher_vars))
    for weight in graph.non_trainable_weights:  # inference mode: the statistics stay
        np.testing.assert_array_equal(weight.numpy(), params[weight.path])

    for stage, (gradient, direction) in enumerate(zip(tape.gradient(loss, student_vars),
                                                      kref.directions(students, seed=10))):
        def along(t, stage=stage, direction=direction):
            moved = list(students)
            moved[stage] = moved[stage] + t * direction
            return transfer_reference(moved, teachers, params)

        np.testing.assert_allclose(np.sum(gradient.numpy() * direction), kref.central_difference(along),
                                   rtol=1e-6)
    assert all(g is None for g in tape.gradient(loss, [w for e in graph.estimators for w in e.weights]))
    attention = [w for a in graph.attentions for w in a.trainable_weights]
    # The teacher's side is a constant: its attention weights are not differentiated.
    _check_weight_gradients(attention, tape.gradient(loss, attention), params,
                            lambda p: transfer_reference(students, teachers, p, params), seed=11)


def test_estimation_loss_trains_attention_and_estimator_in_training_mode():
    graph = _graph(12)
    params = _params(graph)
    teachers = _unit_vectors(13)
    rng = np.random.default_rng(14)
    masks = [(rng.normal(size=(HEADS, BATCH, 1)) > 0).astype(np.float64) for _ in range(2)]
    teacher_vars = [tf.Variable(v) for v in teachers]
    with tf.GradientTape(persistent=True) as tape:
        loss = graph.estimation_loss(teacher_vars, [tf.constant(m) for m in masks])
    np.testing.assert_allclose(loss.numpy(), estimation_reference(teachers, params, masks), rtol=1e-10)
    assert all(g is None for g in tape.gradient(loss, teacher_vars))
    # The receivers' BN offset shifts every G[h, a, :] by a constant, which the softmax over b
    # ignores: only the weight decay reaches it in this stage.
    _check_weight_gradients(graph.trainable_weights, tape.gradient(loss, graph.trainable_weights), params,
                            lambda p: estimation_reference(teachers, p, masks), seed=15,
                            vanishing={f"attention{pair}/receiver_norm/beta" for pair in (1, 2)})

    # Training-mode BN: TF1's fused moving averages, decay 0.9, Bessel-corrected variance.
    for pair in (1, 2):
        previous, target = teachers[pair - 1], teachers[pair]
        inputs = {f"attention{pair}/sender_norm": target @ params[f"attention{pair}/sender/kernel"],
                  f"attention{pair}/receiver_norm": previous @ params[f"attention{pair}/receiver/kernel"],
                  f"estimator{pair}/hidden_norm": previous @ params[f"estimator{pair}/hidden/kernel"]}
        for name, x in inputs.items():
            mean = 0.9 * params[f"{name}/moving_mean"] + 0.1 * x.mean(0)
            variance = 0.9 * params[f"{name}/moving_variance"] + 0.1 * x.var(0, ddof=1)
            got = {w.path: w.numpy() for w in graph.non_trainable_weights}
            np.testing.assert_allclose(got[f"{name}/moving_mean"], mean, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(got[f"{name}/moving_variance"], variance, rtol=1e-10)


def test_init_loss_adds_the_unhalved_weight_decay_of_every_trainable_variable():
    graph = _graph(16)
    params = _params(graph)
    decayed = {w.path for w in graph.trainable_weights}
    # The authors' rule: the 'MHA' variables whose names start with g, w or b.
    assert decayed == {p for p in params if p.split("/")[-1] in {"gamma", "kernel", "beta", "bias"}}
    assert sum(p.endswith("/bias") for p in decayed) == 2  # the estimators' output layers only
    expected_decay = 5e-4 * sum(np.sum(params[p] ** 2) for p in decayed)
    np.testing.assert_allclose(graph.init_weight_decay().numpy(), expected_decay, rtol=1e-12)

    teacher_maps = _maps(17)
    rng = np.random.default_rng(18)
    masks = [(rng.normal(size=(HEADS, BATCH, 1)) > 0).astype(np.float64) for _ in range(2)]
    loss = mhgd.mhgd_init_loss([tf.constant(m) for m in teacher_maps], graph,
                               head_masks=[tf.constant(m) for m in masks])
    teachers = teacher_vectors_reference(teacher_maps)
    np.testing.assert_allclose(loss.numpy(), estimation_reference(teachers, params, masks) + expected_decay,
                               rtol=1e-10)


# ------------------------------------------------------------------ the head-drop mask


def test_head_drop_mask_replays_from_its_seed_and_keeps_half_the_heads():
    first, again = keras.random.SeedGenerator(3), keras.random.SeedGenerator(3)
    masks = [mhgd.head_drop_mask(HEADS, 4096, generator) for generator in (first, first, again, again)]
    np.testing.assert_array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[1], masks[3])
    assert np.any(masks[0].numpy() != masks[1].numpy())
    np.testing.assert_array_equal(mhgd.head_drop_mask(HEADS, 5, 11), mhgd.head_drop_mask(HEADS, 5, 11))

    noise = keras.random.normal((HEADS, 4096, 1), seed=keras.random.SeedGenerator(3)).numpy()
    np.testing.assert_array_equal(masks[0].numpy(), noise > noise.mean(axis=0))
    kept = masks[0].numpy()
    assert kept.shape == (HEADS, 4096, 1)
    # P(z_h > mean_h z) = 1/2; the std of the kept fraction over 4096 samples is 0.0017.
    assert abs(kept.mean() - 0.5) < 0.01
    per_sample = kept.sum(axis=0)
    assert per_sample.min() >= 1 and per_sample.max() <= HEADS - 1


def test_estimators_draw_their_masks_from_the_graph_seed():
    teachers = _unit_vectors(19)
    losses = []
    for mask_seed in (21, 21, 22):
        graph = _graph(20, mask_seed)
        params = _params(graph)
        losses.append(graph.estimation_loss([tf.constant(t) for t in teachers]).numpy())
        masks = []
        for pair in (1, 2):
            noise = keras.random.normal((HEADS, BATCH, 1), seed=keras.random.SeedGenerator(mask_seed + pair),
                                        dtype="float64").numpy()
            masks.append((noise > noise.mean(axis=0)).astype(np.float64))
        np.testing.assert_allclose(losses[-1], estimation_reference(teachers, params, masks), rtol=1e-10)
    assert losses[0] == losses[1] != losses[2]


# ------------------------------------------------------------------ user mistakes


@pytest.mark.parametrize("student_shapes, teacher_shapes, message", [
    ([(2, 4, 4, 8)], [(2, 4, 4, 8)], "at least 2"),
    ([(2, 4, 4, 8)] * 2, [(2, 4, 4, 8)] * 3, "paired one to one"),
    ([(2, 4, 4, 8), (2, 2, 2, 16)], [(2, 4, 4, 8), (2, 2, 2, 32)], "same width"),
])
def test_incompatible_taps_are_user_errors(student_shapes, teacher_shapes, message):
    graph = mhgd.MultiHeadGraph([8, 16])
    with pytest.raises(UserError, match=message):
        mhgd.mhgd_transfer_loss([tf.zeros(s) for s in student_shapes], [tf.zeros(s) for s in teacher_shapes],
                                graph)


def test_vectors_of_other_widths_than_the_graph_are_user_errors():
    graph = mhgd.MultiHeadGraph([8, 16])
    with pytest.raises(UserError, match="built for"):
        graph.transfer_loss([tf.zeros((2, 8)), tf.zeros((2, 32))], [tf.zeros((2, 8)), tf.zeros((2, 32))])
    with pytest.raises(UserError, match="at least 2"):
        mhgd.MultiHeadGraph([8])


# ------------------------------------------------------------------ the registered method


def test_the_registered_loss_is_the_authors_terms_of_each_stage():
    """`sskd_tf.losses.MHGDDistillation` (float64 by the layer policy): the main stage's term
    is `weight` x the transfer loss from the maps, the initialisation stage's the estimation
    loss on the teacher's vectors with the head-drop masks the estimators draw, plus the
    unhalved weight decay of every trainable variable of the attention network."""
    from sskd_tf import losses

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        loss = losses.MHGDDistillation(weight=3.0)
    finally:
        keras.config.set_dtype_policy(policy)
    student_maps, teacher_maps = _maps(30), _maps(31)

    def outputs(maps):
        return {"logits": tf.zeros((BATCH, 3), tf.float64), "features": [tf.constant(m) for m in maps]}

    student, teacher = outputs(student_maps), outputs(teacher_maps)
    loss.method(student, teacher, None)
    graph = _draw(loss.method.graph, 32)
    params = {w.path[min(w.path.index(s) for s in ("attention", "estimator") if s in w.path):]: w.numpy()
              for w in graph.weights}
    teachers = teacher_vectors_reference(teacher_maps)
    expected = 3.0 * transfer_reference(student_vectors_reference(student_maps, teachers), teachers, params)
    np.testing.assert_allclose(loss.method(student, teacher, None)["mhgd"].numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(loss.compute_loss(teacher, student).numpy(), expected, rtol=1e-9)

    states = [estimator.seed_generator.state.numpy() for estimator in graph.estimators]
    init = loss.method.init_loss(None, teacher, None, training=True)["estimation"]
    for estimator, state in zip(graph.estimators, states):
        estimator.seed_generator.state.assign(state)
    masks = [mhgd.head_drop_mask(HEADS, BATCH, estimator.seed_generator, "float64").numpy()
             for estimator in graph.estimators]
    decay = 5e-4 * sum(np.sum(params[p] ** 2) for p in params
                       if p.split("/")[-1] in {"gamma", "kernel", "beta", "bias"})
    np.testing.assert_allclose(init.numpy(), estimation_reference(teachers, params, masks) + decay,
                               rtol=1e-9)
