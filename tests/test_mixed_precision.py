"""--mixed_precision: a KD-SVD train step of a float16 or bfloat16 student and teacher
gives the float32 step's clip ratio and update, the loss scale of float16 removed
before the clip rule; losses and decompositions stay float32."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.distill import build_method
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.precision import dtype_policy

from toy_networks import toy_network

# Unit roundoff of the compute dtype: 2^-11 (float16), 2^-8 (bfloat16).
ROUNDOFF = {"mixed_float16": 2.0 ** -11, "mixed_bfloat16": 2.0 ** -8}


def _step(precision):
    """(update of every student variable, clip ratio, svd loss, distiller) of one step."""
    with dtype_policy(precision):
        student, teacher = toy_network(0), toy_network(1)
    distiller = Distiller(teacher, student, loss_of(build_method("svd", backend="gram")),
                          steps_in_epoch=2)
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


def _traced_nodes(distiller):
    """Every node of the traced train step, nested function bodies included."""
    signature = (tf.TensorSpec([4, 8, 8, 3], tf.float32), tf.TensorSpec([4], tf.int32))
    graph_def = tf.function(distiller.train_step).get_concrete_function(
        signature).graph.as_graph_def()
    return list(graph_def.node) + [node for function in graph_def.library.function
                                   for node in function.node_def]


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_the_decompositions_take_float32_maps_from_networks_of_lower_precision(precision):
    """From the traced step (the README's claim): every decomposition op of either backend
    is a float32 one, while the networks' convolutions compute in `precision`."""
    low = tf.as_dtype(precision.split("_")[1]).as_datatype_enum
    for backend, op in (("gram", "SelfAdjointEigV2"), ("linalg_svd", "Svd")):
        with dtype_policy(precision):
            student, teacher = toy_network(0), toy_network(1)
        distiller = Distiller(teacher, student, loss_of(build_method("svd", backend=backend)),
                              steps_in_epoch=2)
        distiller.build((None, 8, 8, 3))
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        nodes = _traced_nodes(distiller)
        decompositions = [node.attr["T"].type for node in nodes if node.op == op]
        assert decompositions and set(decompositions) == {tf.float32.as_datatype_enum}, backend
        assert low in {node.attr["T"].type for node in nodes if node.op == "Conv2D"}
