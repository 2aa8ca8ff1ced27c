"""FT's mathematics (sskd_tf/distill/ft.py) against a numpy transcription of
KD_methods_with_TF `nets/Response.py: Factor_Transfer` and `op_util.py: Optimizer_w_FT`, in
float64, on the authors' last maps [4, 8, 8, 256] (ResNet32 teacher, ResNet8 student)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_reference as kref
import svd_reference as ref
from sskd_tf.distill import ft
from sskd_tf.errors import UserError

SHAPE = (4, 8, 8, 256)
WIDTH = SHAPE[-1]
WEIGHT_STEP = 1e-5
MAP_STEP = 1e-4


# ------------------------------------------------------------------ numpy transcription


def same_padding(size, stride, kernel=3):
    """TF's SAME: (output size, padding before, padding after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def conv_reference(x, kernel, bias, stride):
    """`conv2d` SAME: x [B, H, W, C], kernel [3, 3, C, F]."""
    (out_h, top, bottom), (out_w, left, right) = same_padding(x.shape[1], stride), same_padding(x.shape[2], stride)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros(x.shape[:1] + (out_h, out_w, kernel.shape[-1])) + bias
    for i in range(3):
        for j in range(3):
            patch = padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
            out += np.tensordot(patch, kernel[i, j], axes=1)
    return out


def conv_transpose_reference(y, kernel, bias, stride):
    """`conv2d_transpose` SAME to [B, stride H, stride W, F]: the adjoint of the SAME conv from
    that shape; kernel [3, 3, F, C]."""
    batch, h, w, _ = y.shape
    (_, top, bottom), (_, left, right) = same_padding(h * stride, stride), same_padding(w * stride, stride)
    padded = np.zeros((batch, h * stride + top + bottom, w * stride + left + right, kernel.shape[2]))
    for i in range(3):
        for j in range(3):
            padded[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride] += (
                np.tensordot(y, kernel[i, j].T, axes=1))
    return padded[:, top:top + h * stride, left:left + w * stride] + bias


# tf.nn.leaky_relu's slope is a float attribute of its op: 0.2 rounded to float32.
LEAKY_SLOPE = float(np.float32(0.2))


def leaky(x):
    return np.where(x > 0, x, LEAKY_SLOPE * x)


def encoder_reference(x, params, scope):
    for layer, stride in ((0, 1), (1, 2)):
        x = leaky(conv_reference(x, params[f"{scope}/conv{layer}/kernel"], params[f"{scope}/conv{layer}/bias"], stride))
    return conv_reference(x, params[f"{scope}/conv2/kernel"], params[f"{scope}/conv2/bias"], 1)


def reconstruction_reference(t, params):
    x = leaky(encoder_reference(t, params, "paraphraser"))
    for layer, stride in ((0, 1), (1, 2), (2, 1)):
        x = leaky(conv_transpose_reference(x, params[f"paraphraser/deconv{layer}/kernel"],
                                           params[f"paraphraser/deconv{layer}/bias"], stride))
    return x


def transfer_reference(s, t, params):
    f_t = ref.l2_normalize(encoder_reference(t, params, "paraphraser"), -1)
    f_s = ref.l2_normalize(encoder_reference(s, params, "translator"), -1)
    return np.mean(np.abs(f_t - f_s))


# ------------------------------------------------------------------ fixtures


def _networks(seed):
    """Built float64 paraphraser and translator, every weight drawn from `seed`, biases too."""
    paraphraser = ft.Paraphraser(WIDTH, dtype="float64", name="paraphraser")
    translator = ft.Translator(WIDTH, dtype="float64", name="translator")
    paraphraser.build(SHAPE)
    translator.build(SHAPE)
    rng = np.random.default_rng(seed)
    for weight in paraphraser.weights + translator.weights:
        fan = np.prod(weight.shape[:-1]) if len(weight.shape) > 1 else 10.0
        weight.assign(rng.normal(0.0, 1.0 / np.sqrt(fan), weight.shape))
    return paraphraser, translator


def _params(*layers):
    return {weight.path: weight.numpy() for layer in layers for weight in layer.weights}


def _maps(seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=SHAPE), 0.0)


def _check_weight_gradients(weights, gradients, params, reference_of_params, seed):
    for weight, gradient, direction in zip(weights, gradients, kref.directions(weights, seed)):
        def along(t, weight=weight, direction=direction):
            return reference_of_params({**params, weight.path: params[weight.path] + t * direction})

        expected = kref.central_difference(along, WEIGHT_STEP)
        assert abs(expected) > 1e-8, weight.path
        np.testing.assert_allclose(np.sum(gradient.numpy() * direction), expected, rtol=1e-5, atol=1e-10,
                                   err_msg=weight.path)


# ------------------------------------------------------------------ tests


def test_paraphraser_and_translator_on_the_authors_last_map():
    paraphraser, translator = ft.Paraphraser(WIDTH), ft.Translator(WIDTH)
    teacher = tf.random.uniform(SHAPE)
    assert paraphraser.encode(teacher).shape == (4, 4, 4, 32)
    assert paraphraser(teacher).shape == SHAPE
    assert translator(teacher).shape == (4, 4, 4, 32)
    shapes = {w.path.split("/", 1)[1]: tuple(w.shape) for w in paraphraser.weights}
    assert shapes == {"conv0/kernel": (3, 3, 256, 128), "conv0/bias": (128,),
                      "conv1/kernel": (3, 3, 128, 64), "conv1/bias": (64,),
                      "conv2/kernel": (3, 3, 64, 32), "conv2/bias": (32,),
                      "deconv0/kernel": (3, 3, 64, 32), "deconv0/bias": (64,),
                      "deconv1/kernel": (3, 3, 128, 64), "deconv1/bias": (128,),
                      "deconv2/kernel": (3, 3, 256, 128), "deconv2/bias": (256,)}
    assert [w.path.split("/", 1)[1] for w in translator.weights] == [
        p for p in shapes if p.startswith("conv")]
    assert [c.strides for c in paraphraser.encoder] == [(1, 1), (2, 2), (1, 1)]
    assert [c.strides for c in paraphraser.decoder] == [(1, 1), (2, 2), (1, 1)]
    # The authors' arg scope initialises the convs; contrib's own default the transposed ones.
    for conv in paraphraser.encoder + translator.encoder:
        assert isinstance(conv.kernel_initializer, keras.initializers.VarianceScaling)
        assert (conv.kernel_initializer.mode, conv.kernel_initializer.scale) == ("fan_out", 2.0)
    for deconv in paraphraser.decoder:
        assert isinstance(deconv.kernel_initializer, keras.initializers.GlorotUniform)


def test_reconstruction_loss_value_and_gradients():
    paraphraser, _ = _networks(1)
    params = _params(paraphraser)
    teacher_map = _maps(2)
    teacher = tf.Variable(teacher_map)
    with tf.GradientTape(persistent=True) as tape:
        loss = ft.reconstruction_loss(teacher, paraphraser)
    reconstruction = reconstruction_reference(teacher_map, params)
    np.testing.assert_allclose(paraphraser(teacher).numpy(), reconstruction, rtol=1e-10, atol=1e-12)
    assert np.any(reconstruction < 0)  # the last leaky-ReLU
    np.testing.assert_allclose(loss.numpy(), np.mean(np.abs(teacher_map - reconstruction)), rtol=1e-12)
    assert tape.gradient(loss, teacher) is None
    _check_weight_gradients(paraphraser.trainable_weights, tape.gradient(loss, paraphraser.trainable_weights),
                            params, lambda p: np.mean(np.abs(teacher_map - reconstruction_reference(teacher_map, p))),
                            seed=3)


def test_factor_transfer_loss_value_and_gradients():
    paraphraser, translator = _networks(4)
    params = _params(paraphraser, translator)
    student_map, teacher_map = _maps(5), _maps(6)
    student, teacher = tf.Variable(student_map), tf.Variable(teacher_map)
    with tf.GradientTape(persistent=True) as tape:
        loss = ft.factor_transfer_loss(student, teacher, paraphraser, translator)
    np.testing.assert_allclose(loss.numpy(), transfer_reference(student_map, teacher_map, params), rtol=1e-12)
    # The paraphraser is frozen and the teacher's factor a constant.
    assert tape.gradient(loss, teacher) is None
    assert all(g is None for g in tape.gradient(loss, paraphraser.trainable_weights))
    _check_weight_gradients(translator.trainable_weights, tape.gradient(loss, translator.trainable_weights),
                            params, lambda p: transfer_reference(student_map, teacher_map, p), seed=7)
    direction = kref.directions([student_map], seed=8)[0]
    expected = kref.central_difference(lambda t: transfer_reference(student_map + t * direction, teacher_map, params),
                                       MAP_STEP)
    np.testing.assert_allclose(np.sum(tape.gradient(loss, student).numpy() * direction), expected, rtol=1e-5)


def test_weight_decays_paraphraser_unhalved_on_kernels_translator_halved():
    paraphraser, translator = _networks(9)
    params = _params(paraphraser, translator)
    kernels = {p: v for p, v in params.items() if p.endswith("/kernel")}
    assert len(kernels) == 9
    np.testing.assert_allclose(
        paraphraser.weight_decay().numpy(),
        5e-4 * sum(np.sum(v ** 2) for p, v in kernels.items() if p.startswith("paraphraser/")), rtol=1e-12)
    translator(tf.constant(_maps(10)))
    np.testing.assert_allclose(
        sum(loss.numpy() for loss in translator.losses),
        5e-4 / 2 * sum(np.sum(v ** 2) for p, v in kernels.items() if p.startswith("translator/")), rtol=1e-6)
    assert paraphraser.losses == []


@pytest.mark.parametrize("student_shape, teacher_shape, message", [
    ((2, 8, 8, 16), (2, 7, 8, 16), "even height and width"),
    ((2, 8, 8, 4), (2, 8, 8, 4), "D >= 8"),
    ((2, 4, 4, 16), (2, 8, 8, 16), "same height and width"),
])
def test_incompatible_maps_are_user_errors(student_shape, teacher_shape, message):
    with pytest.raises(UserError, match=message):
        paraphraser, translator = ft.Paraphraser(teacher_shape[-1]), ft.Translator(teacher_shape[-1])
        ft.reconstruction_loss(tf.zeros(teacher_shape), paraphraser)
        ft.factor_transfer_loss(tf.zeros(student_shape), tf.zeros(teacher_shape), paraphraser, translator)
    with pytest.raises(UserError, match="width 16 cannot take"):
        ft.reconstruction_loss(tf.zeros((2, 8, 8, 32)), ft.Paraphraser(16))


def test_the_registered_loss_is_the_authors_terms_of_each_stage():
    """`sskd_tf.losses.FTDistillation` on the networks' last taps: the main stage's term is
    500 x the factor-transfer loss, the paraphraser stage's the reconstruction and the
    paraphraser's unhalved weight decay (float32, against the float64 transcription)."""
    from sskd_tf import losses

    shape = (2, 4, 4, 16)
    rng = np.random.default_rng(21)
    student_map, teacher_map = (np.maximum(rng.normal(size=shape), 0.0).astype(np.float32)
                                for _ in range(2))

    def outputs(last):
        return {"logits": tf.zeros((2, 3)), "features": [tf.zeros((2, 8, 8, 4)), tf.constant(last)]}

    loss = losses.FTDistillation()
    student, teacher = outputs(student_map), outputs(teacher_map)
    terms = loss.method(student, teacher, None)
    params = {w.path[w.path.index(scope):]: w.numpy().astype(np.float64)
              for scope in ("paraphraser/", "translator/") for w in loss.method.weights
              if scope in w.path}
    assert len(params) == 18
    expected = 500.0 * transfer_reference(student_map.astype(np.float64), teacher_map.astype(np.float64),
                                          params)
    np.testing.assert_allclose(terms["factor_transfer"].numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(loss.compute_loss(teacher, student).numpy(), expected, rtol=1e-4)
    init = loss.method.paraphraser_loss(None, teacher, None)
    reconstruction = np.mean(np.abs(teacher_map - reconstruction_reference(teacher_map.astype(np.float64),
                                                                           params)))
    decay = 5e-4 * sum(np.sum(v ** 2) for p, v in params.items()
                       if p.startswith("paraphraser/") and p.endswith("/kernel"))
    np.testing.assert_allclose(init["reconstruction"].numpy(), reconstruction, rtol=1e-4)
    np.testing.assert_allclose(init["paraphraser_decay"].numpy(), decay, rtol=1e-5)
    half = losses.FTDistillation(weight=250.0)
    half.method(student, teacher, None)
    half.method.set_weights(loss.method.get_weights())
    np.testing.assert_allclose(half.method(student, teacher, None)["factor_transfer"].numpy(),
                               expected / 2, rtol=1e-4)
