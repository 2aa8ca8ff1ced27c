"""sskd_tf.models.mat_weights: round trips through the authors' .mat layouts and the
errors a user can cause."""
import keras
import numpy as np
import pytest
import scipy.io

from sskd_tf import models
from sskd_tf.models.mat_weights import load_mat_weights, save_mat_weights

NUM_CLASSES = 10


def images():
    return np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")


def randomised(name, num_classes=NUM_CLASSES):
    """A model whose every weight, BN moving statistics included, is random, so that a
    wrong assignment changes the logits."""
    model = models.build_model(name, num_classes)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        low, high = (0.5, 1.5) if weight.name == "moving_variance" else (-0.5, 0.5)
        weight.assign(rng.uniform(low, high, weight.shape).astype("float32"))
    return model


def logits(model):
    return keras.ops.convert_to_numpy(model(images(), training=False)["logits"])


@pytest.mark.parametrize("name, layout", [("resnet32", "resnet"), ("wrn40_4", "wrn")])
def test_round_trip_gives_identical_logits(tmp_path, name, layout):
    path = str(tmp_path / "weights.mat")
    original = randomised(name)
    save_mat_weights(original, path, layout)
    fresh = models.build_model(name, NUM_CLASSES)
    load_mat_weights(fresh, path, layout)
    np.testing.assert_array_equal(logits(fresh), logits(original))


def test_resnet_file_uses_the_tf1_names(tmp_path):
    path = str(tmp_path / "resnet32.mat")
    model = models.build_model("resnet32", NUM_CLASSES)
    save_mat_weights(model, path, "resnet")
    stored = {name: value.shape for name, value in scipy.io.loadmat(path).items()
              if not name.startswith("__")}
    assert len(stored) == len(model.weights)
    assert stored["Teacher/conv0/weights"] == (3, 3, 3, 32)
    assert stored["Teacher/bn0/moving_variance"] == (1, 32)
    assert stored["Teacher/Resblock0/BasicBlock0/conv2/weights"] == (1, 1, 32, 64)
    assert stored["Teacher/Resblock2/BasicBlock4/bn1/gamma"] == (1, 256)
    assert stored["Teacher/full/weights"] == (256, NUM_CLASSES)
    assert stored["Teacher/full/biases"] == (1, NUM_CLASSES)


def test_wrn_file_uses_the_tf2_names_and_shapes(tmp_path):
    path = str(tmp_path / "wrn40_4.mat")
    model = models.build_model("wrn40_4", NUM_CLASSES)
    save_mat_weights(model, path, "wrn")
    stored = {name: value.shape for name, value in scipy.io.loadmat(path).items()
              if not name.startswith("__")}
    assert len(stored) == len(model.weights)
    assert stored["conv/kernel:0"] == (3, 3, 3, 16)
    assert stored["BasicBlock0.0/conv2/kernel:0"] == (1, 1, 16, 64)
    assert stored["BasicBlock1.0/bn/moving_var:0"] == (1, 1, 1, 64)
    assert stored["BasicBlock2.5/conv1/kernel:0"] == (3, 3, 256, 256)
    assert stored["bn_last/gamma:0"] == (1, 1, 1, 256)
    assert stored["fc/biases:0"] == (1, NUM_CLASSES)


def test_resnet_file_of_another_scope_loads(tmp_path):
    teacher_path, student_path = str(tmp_path / "teacher.mat"), str(tmp_path / "student.mat")
    original = randomised("resnet8")
    save_mat_weights(original, teacher_path, "resnet")
    stored = {name.replace("Teacher/", "Student/"): value
              for name, value in scipy.io.loadmat(teacher_path).items()
              if not name.startswith("__")}
    scipy.io.savemat(student_path, stored)
    fresh = models.build_model("resnet8", NUM_CLASSES)
    load_mat_weights(fresh, student_path, "resnet")
    np.testing.assert_array_equal(logits(fresh), logits(original))


def test_file_of_another_architecture_is_rejected_and_nothing_assigned(tmp_path):
    path = str(tmp_path / "resnet8.mat")
    save_mat_weights(models.build_model("resnet8", NUM_CLASSES), path, "resnet")
    resnet32 = models.build_model("resnet32", NUM_CLASSES)
    before = keras.ops.convert_to_numpy(resnet32.get_layer("stem_conv").kernel)
    with pytest.raises(ValueError, match=r"does not fit model resnet32 .* missing: "
                                         r"Resblock0/BasicBlock1/bn0/beta") as raised:
        load_mat_weights(resnet32, path, "resnet")
    assert "\n" not in str(raised.value)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(resnet32.get_layer("stem_conv").kernel), before)


def test_other_shapes_are_reported(tmp_path):
    path = str(tmp_path / "resnet8_100_classes.mat")
    save_mat_weights(models.build_model("resnet8", 100), path, "resnet")
    with pytest.raises(ValueError, match=r"with another shape: full/biases is \(1, 100\) "
                                         r"instead of \(10,\)"):
        load_mat_weights(models.build_model("resnet8", NUM_CLASSES), path, "resnet")


def test_names_the_model_lacks_are_reported(tmp_path):
    path = str(tmp_path / "resnet14.mat")
    save_mat_weights(models.build_model("resnet14", NUM_CLASSES), path, "resnet")
    with pytest.raises(ValueError, match=r"not in the model: Resblock0/BasicBlock1/"):
        load_mat_weights(models.build_model("resnet8", NUM_CLASSES), path, "resnet")


def test_wrong_layout_is_rejected(tmp_path):
    path = str(tmp_path / "wrn.mat")
    save_mat_weights(models.build_model("wrn16_4", NUM_CLASSES), path, "wrn")
    with pytest.raises(ValueError, match="missing: .*not in the model: "):
        load_mat_weights(models.build_model("resnet8", NUM_CLASSES), path, "resnet")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no .mat file at"):
        load_mat_weights(models.build_model("resnet8", NUM_CLASSES),
                         str(tmp_path / "absent.mat"), "resnet")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mat"
    path.write_bytes(b"this is not a MATLAB file" * 8)
    with pytest.raises(ValueError, match="cannot read .* as a .mat file") as raised:
        load_mat_weights(models.build_model("resnet8", NUM_CLASSES), str(path), "resnet")
    assert "\n" not in str(raised.value)


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown mat layout 'vgg'; choose one of: resnet, wrn"):
        load_mat_weights(models.build_model("resnet8", NUM_CLASSES), "unused.mat", "vgg")
