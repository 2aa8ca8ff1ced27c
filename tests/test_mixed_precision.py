"""--mixed_precision: a KD-SVD train step of a float16 or bfloat16 student and teacher
gives the float32 step's clip ratio and update, the loss scale of float16 removed
before the clip rule; losses and decompositions stay float32."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.distill import build_method
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.precision import dtype_policy

from toy_networks import toy_network

# Unit roundoff of the compute dtype: 2^-11 (float16), 2^-8 (bfloat16).
ROUNDOFF = {"mixed_float16": 2.0 ** -11, "mixed_bfloat16": 2.0 ** -8}


def _step(precision):
    """(update of every student variable, clip ratio, svd loss, distiller) of one step."""
    with dtype_policy(precision):
        student, teacher = toy_network(0), toy_network(1)
    distiller = Distiller(student, build_method("svd", backend="gram"), teacher, steps_in_epoch=2)
    distiller.build((None, 8, 8, 3))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    images = tf.constant(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), tf.float32)
    labels = tf.constant([0, 1, 2, 0])
    before = [v.numpy() for v in student.trainable_variables]
    logs = distiller.train_step((images, labels))
    update = [b - v.numpy() for b, v in zip(before, student.trainable_variables)]
    return update, float(logs["clip_ratio"]), float(logs["svd_loss"]), distiller


@pytest.fixture(scope="module")
def float32_step():
    return _step("none")


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_clip_ratio_and_update_equal_the_float32_step(float32_step, precision):
    """Tolerance: 32 unit roundoffs of the compute dtype, relative (2% for float16,
    12.5% for bfloat16). The step's numbers go through two convolutions and their
    gradients, each rounding by about one roundoff, then the Gram matrices' leading
    eigenvectors, which amplify a feature error by s_1^2 / (s_i^2 - s_j^2), a few units
    on these maps; measured: about 19 roundoffs on the update with bfloat16. A loss
    scale left in the gradients would be off by a factor 2^15."""
    update_32, ratio_32, loss_32, _ = float32_step
    assert 0.0 < ratio_32 < 1.0, "the step must exercise the clip rule"
    update, ratio, loss, distiller = _step(precision)
    tolerance = 32 * ROUNDOFF[precision]
    assert ratio == pytest.approx(ratio_32, rel=tolerance)
    assert loss == pytest.approx(loss_32, rel=tolerance)
    for got, want in zip(update, update_32):
        assert np.linalg.norm(got - want) <= tolerance * np.linalg.norm(want)
    assert distiller.student.layers[1].compute_dtype == precision.split("_")[1]
    assert all(v.dtype == "float32" for v in distiller.student.trainable_variables)


def test_only_float16_scales_the_loss(float32_step):
    assert float32_step[3].loss_scale is None
    assert _step("mixed_bfloat16")[3].loss_scale is None
    assert float(_step("mixed_float16")[3].loss_scale.numpy()) == 2.0 ** 15


def test_policy_is_restored_and_checked():
    with dtype_policy("mixed_float16"):
        assert keras.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="choose one of: none, mixed_bfloat16, mixed_float16"):
        with dtype_policy("float8"):
            pass
