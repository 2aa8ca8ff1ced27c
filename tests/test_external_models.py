"""Networks from outside the port on the command line: `.keras` files and
keras.applications, with taps read by layer name (main.py's flags, parsed and run in this
process: tests/test_method_runs.py runs main.py itself)."""
import copy
import os

import keras
import pytest
from absl import flags as absl_flags

import flags  # noqa: F401  (defines main.py's flags)
from main_cli import main_errors
from sskd_tf import models, modes
from sskd_tf.errors import UserError
from sskd_tf.training.callbacks import read_history

TAPS = "block1,block2,block3"


def convnet(name, width):
    x = inputs = keras.Input((32, 32, 3))
    for block in TAPS.split(","):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=block)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    teacher, student = str(directory / "teacher.keras"), str(directory / "student.keras")
    convnet("teacher", 8).save(teacher)
    convnet("student", 4).save(student)
    return teacher, student


@pytest.mark.parametrize("method, options, term", [
    ("svd", ["--project_student"], "svd_loss"),
    ("at", [], "attention_loss"),
])
def test_main_py_distils_keras_files(model_files, tmp_path, method, options, term):
    teacher, student = model_files
    train_dir = str(tmp_path / "run")
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", f"--teacher={teacher}", f"--student={student}",
                 f"--teacher_taps={TAPS}", f"--student_taps={TAPS}", f"--method={method}",
                 *options, "--dataset=digits", "--epochs=1", "--take_train=64",
                 "--take_test=32", "--batch_size=32", "--verbosity=-1",
                 f"--train_dir={train_dir}"])
    modes.run(flag_values.mode, flag_values)
    [row] = read_history(train_dir)
    assert float(row[term]) > 0.0
    saved = keras.saving.load_model(os.path.join(train_dir, "student.keras"))
    assert [layer.name for layer in saved.layers if layer.name.startswith("block")] == TAPS.split(",")


def test_a_missing_tap_is_one_line_with_near_matches(model_files, tmp_path):
    teacher, student = model_files
    [(line, _)] = main_errors([f"--teacher={teacher}", f"--student={student}",
                               "--teacher_taps=blok1,block2,block3", f"--student_taps={TAPS}",
                               "--dataset=digits", "--take_train=32", "--take_test=32",
                               f"--train_dir={tmp_path}"])
    assert "has no layer 'blok1'; closest: block1" in line


def test_a_keras_application_is_built_for_the_data_with_taps():
    model = models.build_model("keras:MobileNetV2", 7, (32, 32, 3),
                               taps=["block_1_expand_relu", "block_3_expand_relu"])
    assert tuple(model.output["logits"].shape) == (None, 7)
    assert [tuple(f.shape[1:]) for f in model.output["features"]] == [(16, 16, 96), (8, 8, 144)]
    assert model.get_layer("predictions").activation is keras.activations.linear


def test_an_unknown_keras_application_names_the_closest():
    with pytest.raises(UserError, match="no model 'MobileNetv2'; closest: MobileNetV2"):
        models.build_model("keras:MobileNetv2", 10, (32, 32, 3))


def test_a_keras_file_for_other_data_is_refused(model_files):
    with pytest.raises(UserError, match="predicts 10 classes but the data have 3"):
        models.build_model(model_files[0], 3, (32, 32, 3), taps=["block1"])
    with pytest.raises(UserError, match=r"takes \(32, 32, 3\) inputs but the data are \(64, 64, 3\)"):
        models.build_model(model_files[0], 10, (64, 64, 3), taps=["block1"])


def test_imagenet_weights_that_cannot_be_fetched_are_one_line(monkeypatch):
    def offline(**kwargs):
        if kwargs.get("weights") == "imagenet":
            raise OSError("URL fetch failure: no network")
        raise AssertionError(f"asked for {kwargs}")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(UserError, match=r"could not fetch the imagenet weights \(OSError: URL fetch "
                                        r"failure: no network\); use keras:MobileNetV2"):
        models.build_model("keras:MobileNetV2:imagenet", 10, (32, 32, 3))
