"""slim's BN update (Bessel-corrected moving variance) in the families whose authors'
code used it, checked against numpy; normalisation and saving unchanged."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf import models
from sskd_tf.distill import build_method
from sskd_tf.models.common import SlimBatchNormalization
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller

SHAPE = (8, 8, 3)
MOMENTUM = 0.9


def _images(count=4, seed=0):
    return np.random.default_rng(seed).normal(size=(count,) + SHAPE).astype("float32")


def _expected_statistics(conv_output):
    """slim's fused update from ones / zeros: x <- x - (x - value) * (1 - momentum),
    value = the batch mean, and the batch variance times n / (n - 1), n = B*H*W."""
    values = conv_output.reshape(-1, conv_output.shape[-1]).astype(np.float64)
    n = values.shape[0]
    mean, variance = values.mean(axis=0), values.var(axis=0) * n / (n - 1)
    decay = 1.0 - MOMENTUM
    return 0.0 - (0.0 - mean) * decay, 1.0 - (1.0 - variance) * decay


@pytest.mark.parametrize("name,layer", [("resnet8", "stem_bn"), ("mobilenet_student", "stem_bn"),
                                        ("resnext_student", "stem_conv_bn")])
def test_one_training_step_moves_the_variance_towards_the_bessel_corrected_one(name, layer):
    keras.utils.set_random_seed(0)
    student = models.build_model(name, 3, input_shape=SHAPE, weight_decay=5e-4)
    bn = student.get_layer(layer)
    assert isinstance(bn, SlimBatchNormalization)
    images = _images()
    conv_output = keras.Model(student.input, bn.input)(images).numpy()
    distiller = Distiller(None, student, loss_of(build_method("none")), steps_in_epoch=10)
    distiller.build((None,) + SHAPE)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.train_step((tf.constant(images), tf.constant([0, 1, 2, 0])))
    mean, variance = _expected_statistics(conv_output)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-5, atol=1e-6)


def test_keras_batch_norm_keeps_the_biased_update_and_wrn_uses_it():
    keras.utils.set_random_seed(0)
    student = models.build_model("resnet8", 3, input_shape=SHAPE, keras_batch_norm=True)
    bn = student.get_layer("stem_bn")
    assert type(bn) is keras.layers.BatchNormalization
    images = _images()
    conv_output = keras.Model(student.input, bn.input)(images).numpy()
    student(images, training=True)
    values = conv_output.reshape(-1, conv_output.shape[-1])
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * values.var(axis=0), rtol=1e-5)
    wrn = models.build_model("wrn16_1", 3, input_shape=SHAPE)
    assert not any(isinstance(layer, SlimBatchNormalization) for layer in wrn.layers)


def test_normalisation_is_unchanged_in_training_and_inference():
    keras.utils.set_random_seed(0)
    slim_model = models.build_model("resnet8", 3, input_shape=SHAPE)
    keras_model = models.build_model("resnet8", 3, input_shape=SHAPE, keras_batch_norm=True)
    rng = np.random.default_rng(1)
    weights = [w + rng.normal(size=w.shape).astype("float32") * 0.1 if "moving" in p else w
               for w, p in zip(slim_model.get_weights(), [v.path for v in slim_model.weights])]
    weights = [np.abs(w) + 0.5 if "moving_variance" in p else w
               for w, p in zip(weights, [v.path for v in slim_model.weights])]
    slim_model.set_weights(weights)
    keras_model.set_weights(weights)
    images = _images(seed=2)
    for training in (False, True):
        np.testing.assert_array_equal(slim_model(images, training=training)["logits"].numpy(),
                                      keras_model(images, training=training)["logits"].numpy())


def test_a_keras_file_round_trip_keeps_the_layer_and_its_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    student = models.build_model("resnet8", 3, input_shape=SHAPE)
    student(_images(), training=True)
    path = str(tmp_path / "student.keras")
    student.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("stage1_block0_bn0"), SlimBatchNormalization)
    images = _images(seed=3)
    np.testing.assert_array_equal(loaded(images)["logits"].numpy(), student(images)["logits"].numpy())
    loaded(images, training=True)
    student(images, training=True)
    np.testing.assert_array_equal(loaded.get_layer("stem_bn").moving_variance.numpy(),
                                  student.get_layer("stem_bn").moving_variance.numpy())
