"""The library API: sskd_tf.Distiller on plain Keras models, sskd_tf.losses inside it and
inside keras.distillation.Distiller. Loss values are checked against numpy
transcriptions (attention transfer) or the method's function applied to feature maps
extracted independently of the tap models (KD-SVD)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import sskd_tf
from sskd_tf.training.schedule import EpochCut
from sskd_tf.distill import METHODS
from sskd_tf.distill.kd_svd import svd_kd_loss
from sskd_tf.errors import UserError

TAPS = ["block1", "block2", "block3"]


def convnet(name, width, seed, classes=3, softmax=False):
    """A tiny functional convnet with named layers."""
    x = inputs = keras.Input((8, 8, 3))
    for number, block in enumerate(TAPS):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=block,
                                kernel_initializer=keras.initializers.GlorotUniform(seed + number))(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None, name="logits",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed + 9))(x)
    return keras.Model(inputs, outputs, name=name)


def toy_data(count=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, 8, 8, 3)).astype("float32"), np.arange(count) % 3


def attention_numpy(student_map, teacher_map, beta=1e3):
    """beta/2 * mean over batch and positions of (Q_S - Q_T)^2, Q the L2-normalised
    channel mean of the squared activations (Zagoruyko & Komodakis, eq. 2)."""
    def attention(feature_map):
        energy = (feature_map.astype(np.float64) ** 2).mean(axis=-1).reshape(len(feature_map), -1)
        return energy / np.maximum(np.linalg.norm(energy, axis=1, keepdims=True), 1e-12)
    return beta / 2 * np.mean((attention(student_map) - attention(teacher_map)) ** 2)


def layer_outputs(model, names, images):
    """The outputs of the layers `names`, through a model made here (not the tap model)."""
    outputs = keras.Model(model.input, [model.get_layer(n).output for n in names])(images)
    return outputs if isinstance(outputs, list) else [outputs]


def test_kd_svd_one_epoch_through_the_api(tmp_path):
    teacher_file = tmp_path / "teacher.keras"
    convnet("teacher", 6, seed=1).save(teacher_file)
    teacher = keras.saving.load_model(teacher_file)
    student = convnet("student", 4, seed=2)
    images, labels = toy_data()
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    # The student's taps in another order than the teacher's: routing follows the names.
    student_taps = ["block2", "block1", "block3"]
    teacher_taps = ["block1", "block2", "block3"]
    distiller = sskd_tf.Distiller(
        teacher=teacher, student=student,
        distillation_losses=sskd_tf.losses.SVDDistillation(
            teacher_layer_names=teacher_taps, student_layer_names=student_taps, project_student=True))
    assert distiller.method.gradient_rule == "clip" and not teacher.trainable
    student_before = [w.copy() for w in student.get_weights()]
    # Learning rate 0 with the whole set in one batch: the reported term is the loss at
    # the initial weights.
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"])
    history = distiller.fit(images, labels, batch_size=len(images), epochs=1, verbose=0).history
    assert distiller.student is student and distiller.teacher is teacher
    projections = distiller.method.projections
    student_maps = layer_outputs(student, student_taps, images)
    student_maps = [m if p is None else p(m, training=True) for p, m in zip(projections, student_maps)]
    expected = svd_kd_loss(student_maps, layer_outputs(teacher, teacher_taps, images))
    np.testing.assert_allclose(history["svd_loss"][0], float(expected), rtol=1e-4)
    assert set(history) >= {"loss", "ce_loss", "wd_loss", "kd_loss", "clip_ratio", "accuracy"}

    distiller.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    history = distiller.fit(images, labels, batch_size=10, epochs=1, verbose=0).history
    assert distiller.epoch_cut == EpochCut.of_steps(3)  # ceil(24 / 10), derived by fit
    assert 0.0 < history["clip_ratio"][0] <= 1.0
    assert any(not np.allclose(a, b) for a, b in zip(student_before, student.get_weights()))
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_attention_one_epoch_through_the_api_with_a_probability_output():
    teacher, student = convnet("teacher", 6, seed=1), convnet("student", 4, seed=2, softmax=True)
    images, labels = toy_data()
    distiller = sskd_tf.Distiller(
        teacher, student,
        sskd_tf.losses.AttentionDistillation(teacher_layer_name="block3", student_layer_name="block2"),
        distillation_loss_weights=[0.5])
    assert distiller.method.gradient_rule == "sum"
    distiller.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss="sparse_categorical_crossentropy")  # reads probabilities
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(images))
    history = distiller.fit(dataset, epochs=1, verbose=0).history
    assert distiller.epoch_cut == EpochCut.of_steps(1)
    [student_map], [teacher_map] = (layer_outputs(student, ["block2"], images),
                                    layer_outputs(teacher, ["block3"], images))
    np.testing.assert_allclose(history["attention_loss"][0],
                               0.5 * attention_numpy(np.asarray(student_map), np.asarray(teacher_map)),
                               rtol=1e-4)
    probabilities = np.asarray(student(images), np.float64)
    cross_entropy = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    np.testing.assert_allclose(history["ce_loss"][0], cross_entropy, rtol=1e-4)


def test_keras_distiller_trains_with_an_sskd_tf_loss():
    teacher, student = convnet("teacher", 6, seed=1), convnet("student", 4, seed=2)
    images, labels = toy_data()
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=0.5,
        distillation_losses=sskd_tf.losses.AttentionDistillation(
            teacher_layer_name="block2", student_layer_name="block2"))
    distiller.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = distiller.fit(images, labels, batch_size=len(images), epochs=1, verbose=0).history
    [student_map], [teacher_map] = (layer_outputs(m, ["block2"], images) for m in (student, teacher))
    np.testing.assert_allclose(history["distillation_loss"][0],
                               attention_numpy(np.asarray(student_map), np.asarray(teacher_map)),
                               rtol=1e-4)


def test_a_missing_layer_name_is_one_line_with_near_matches():
    teacher, student = convnet("teacher", 6, seed=1), convnet("student", 4, seed=2)
    loss = sskd_tf.losses.AttentionDistillation(teacher_layer_name="blok2", student_layer_name="block2")
    with pytest.raises(UserError, match=r"teacher 'teacher' has no layer 'blok2'; closest: block2") as error:
        sskd_tf.Distiller(teacher, student, loss)
    assert "\n" not in str(error.value)


def test_feature_losses_need_layer_names_on_plain_models():
    with pytest.raises(UserError, match="give it teacher_layer_names"):
        sskd_tf.Distiller(convnet("t", 6, 1), convnet("s", 4, 2), sskd_tf.losses.FSPDistillation())


def test_mixed_gradient_rules_must_be_chosen():
    teacher, student = convnet("teacher", 6, seed=1), convnet("student", 6, seed=2)
    losses = [sskd_tf.losses.SVDDistillation(TAPS, TAPS), sskd_tf.losses.AttentionDistillation(
        teacher_layer_name="block3", student_layer_name="block3")]
    with pytest.raises(UserError, match="gradient_rule"):
        sskd_tf.Distiller(teacher, student, losses)
    distiller = sskd_tf.Distiller(teacher, student, losses, gradient_rule="sum")
    assert distiller.method.gradient_rule == "sum"


def test_every_method_has_a_distillation_loss_derived_from_its_declaration():
    assert set(sskd_tf.losses.LOSS_CLASSES) == set(METHODS.names())
    for name, loss_class in sskd_tf.losses.LOSS_CLASSES.items():
        method_class = METHODS.get(name)
        assert loss_class.__name__ == method_class.library_name
        assert getattr(sskd_tf.losses, method_class.library_name) is loss_class
        assert loss_class.__doc__ == method_class.__doc__ and loss_class.__doc__
        assert issubclass(loss_class, keras.distillation.DistillationLoss)
        taps = ["a", "b"][:max(method_class.min_taps, 1)]
        assert isinstance(loss_class(taps, taps).method, method_class)


def _keras_recipe(distiller_class, teacher, student, losses, **kwargs):
    distiller = distiller_class(teacher=teacher, student=student, distillation_losses=losses,
                                **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = toy_data()
    distiller.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return [w.numpy() for w in student.weights]


@pytest.mark.parametrize("loss", ["logits", "feature"])
def test_code_written_for_keras_distillation_trains_the_same_student(loss):
    """Keras' own losses, Keras' weighting (student_loss_weight given or its 0.5 default):
    the student sskd_tf.Distiller trains equals keras.distillation.Distiller's."""
    def losses():
        if loss == "logits":
            return keras.distillation.LogitsDistillation(temperature=3.0)
        return [keras.distillation.FeatureDistillation(teacher_layer_name="block2",
                                                       student_layer_name="block2"),
                keras.distillation.LogitsDistillation()]

    kwargs = {} if loss == "logits" else {"distillation_loss_weights": [0.3, 1.0],
                                          "student_loss_weight": 0.7}
    trained = [_keras_recipe(distiller_class, convnet("teacher", 6, seed=1),
                             convnet("student", 6, seed=2), losses(), **kwargs)
               for distiller_class in (keras.distillation.Distiller, sskd_tf.Distiller)]
    for keras_weight, ours in zip(*trained):
        np.testing.assert_allclose(ours, keras_weight, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(
        trained[1], [w.numpy() for w in convnet("student", 6, seed=2).weights]))


class Subclassed(keras.Model):
    def __init__(self, width, seed, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(width, 3, kernel_initializer=keras.initializers.GlorotUniform(seed))
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed + 1))

    def call(self, images, training=False):
        return self.dense(self.pool(self.conv(images)))


def test_subclassed_models_distil_through_their_outputs():
    teacher, student = Subclassed(6, 1, name="teacher"), Subclassed(4, 2, name="student")
    images, labels = toy_data()
    teacher(images), student(images)
    before = [w.numpy().copy() for w in student.weights]
    distiller = sskd_tf.Distiller(teacher, student, sskd_tf.losses.SoftLogitsDistillation())
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    history = distiller.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    assert history["soft_logits_loss"][0] > 0
    assert distiller.student is student
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, student.weights))
    with pytest.raises(UserError, match="subclassed model: taps read layer outputs by name"):
        sskd_tf.Distiller(teacher, student, sskd_tf.losses.AttentionDistillation(
            teacher_layer_name="conv", student_layer_name="conv"))


def test_a_distiller_saves_and_loads_with_its_config(tmp_path):
    teacher, student = convnet("teacher", 6, seed=1), convnet("student", 4, seed=2)
    distiller = sskd_tf.Distiller(teacher, student, sskd_tf.losses.SVDDistillation(
        TAPS, TAPS, backend="gram", project_student=True), distillation_loss_weights=[2.0])
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    images, labels = toy_data()
    distiller.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(loaded, sskd_tf.Distiller)
    assert loaded.get_config()["distillation_loss_weights"] == [2.0]
    [loss] = loaded.distillation_losses
    assert (type(loss).__name__, loss.method.options.backend, loss.teacher_layer_names) == (
        "SVDDistillation", "gram", TAPS)
    np.testing.assert_allclose(loaded.student(images), student(images), rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(distiller.method.weights, loaded.method.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
