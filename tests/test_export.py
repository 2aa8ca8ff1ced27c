"""LiteRT export: a tiny resnet8 trained alone one epoch on 8x8 digits by `--mode=teacher
--export`; its three .tflite models checked against the Keras model on the run's own
(resized) validation images by an input/output loop written here (not the exporter's), its
report, its warning, a conversion that fails leaving nothing, --mode=export, and the
one-line errors."""
import copy
import glob
import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags  # noqa: F401  (defines main.py's flags)
from sskd_tf import data as datasets
from sskd_tf import models, modes
from sskd_tf.data.recipes import normalize
from sskd_tf.errors import UserError
from sskd_tf.export import ExportOptions, convert, export_run, exporter, report
from sskd_tf.export.interpreter import load_interpreter

from main_cli import main_errors

TAKE_TRAIN, TAKE_TEST, IMAGE_SIZE = 128, 64, 8
RUN_FLAGS = ["--teacher=resnet8", "--dataset=digits", f"--image_size={IMAGE_SIZE}",
             f"--take_train={TAKE_TRAIN}", f"--take_test={TAKE_TEST}", "--epochs=1",
             "--batch_size=64"]
REPORT_KEYS = {"format", "file", "size_bytes", "accuracy", "agreement",
               "max_abs_logit_difference", "latency_ms"}


def _flag_values(*argv):
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", *argv])
    return flag_values


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A teacher trained and exported by `--mode=teacher --export`, as a user runs it."""
    train_dir = str(tmp_path_factory.mktemp("run"))
    flag_values = _flag_values("--mode=teacher", *RUN_FLAGS, f"--train_dir={train_dir}",
                               "--export", "--representative_samples=32", "--latency_runs=3")
    modes.run(flag_values.mode, flag_values)
    with open(os.path.join(train_dir, "export", "report.json")) as handle:
        return train_dir, json.load(handle)


@pytest.fixture(scope="module")
def validation(exported_run):
    """The run's validation images (resized to 8x8 as a bilinear resize rounded back to
    uint8, then normalised) and labels, and the Keras logits."""
    train_dir, _ = exported_run
    _, _, images, labels = datasets.load_arrays("digits")
    resized = tf.image.resize(images[:TAKE_TEST], (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    images = normalize(np.clip(np.rint(resized), 0, 255).astype(np.uint8)).numpy()
    student = keras.saving.load_model(os.path.join(train_dir, "student.keras"), compile=False)
    return images, labels[:TAKE_TEST], student(images, training=False)["logits"].numpy()


def _tflite_logits(path, images):
    """Logits of each image, one at a time, quantising the input and dequantising the
    output of an integer model by the tensors' (scale, zero point)."""
    interpreter = load_interpreter(pathlib.Path(path).read_bytes(), num_threads=1)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    logits = []
    for image in images:
        if inputs["dtype"] == np.int8:
            scale, zero_point = inputs["quantization"]
            image = np.clip(np.round(image / scale) + zero_point, -128, 127).astype(np.int8)
        interpreter.set_tensor(inputs["index"], image[None])
        interpreter.invoke()
        output = interpreter.get_tensor(outputs["index"])[0]
        if outputs["dtype"] == np.int8:
            scale, zero_point = outputs["quantization"]
            output = (output.astype(np.float32) - zero_point) * scale
        logits.append(output)
    return np.array(logits)


def test_every_format_is_written_with_its_row_in_the_report(exported_run):
    train_dir, payload = exported_run
    assert [row["format"] for row in payload["rows"]] == ["keras", "float32", "float16", "int8"]
    for row in payload["rows"]:
        assert set(row) == REPORT_KEYS
        assert row["size_bytes"] == os.path.getsize(os.path.join(train_dir, row["file"]))
        assert 0.0 <= row["accuracy"] <= 1.0 and row["latency_ms"] > 0
    sizes = {row["format"]: row["size_bytes"] for row in payload["rows"]}
    assert sizes["float16"] < 0.55 * sizes["float32"] and sizes["int8"] < 0.3 * sizes["float32"]
    assert payload["validation_images"] == TAKE_TEST and payload["representative_samples"] == 32
    assert payload["cpu_count"] == os.cpu_count() and payload["interpreter_threads"] == 1
    with open(os.path.join(train_dir, "export", "report.md")) as handle:
        markdown = handle.read()
    for row in payload["rows"]:
        assert f"| {row['format']} | {row['file']} | {row['size_bytes'] / 1024:.1f} " in markdown
    assert not glob.glob(os.path.join(train_dir, ".export-*"))


def test_float32_logits_match_the_keras_model(exported_run, validation):
    train_dir, payload = exported_run
    images, labels, reference = validation
    logits = _tflite_logits(os.path.join(train_dir, "export", "float32.tflite"), images)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4)
    keras_row, float32_row = payload["rows"][:2]
    assert keras_row["accuracy"] == pytest.approx(np.mean(reference.argmax(-1) == labels))
    assert float32_row["agreement"] == 1.0


def test_float16_logits_match_within_the_rounding_of_the_weights(exported_run, validation):
    # float16 stores the (batch-norm folded) weights rounded to 11 significant bits, a
    # relative error of at most 2**-11 ~ 4.9e-4 each, and computes in float32 on a CPU.
    # Through resnet8's 8 weight layers these add up to ~8 * 4.9e-4 ~ 4e-3 of the logits'
    # scale; the tolerance allows 2.5 times that.
    train_dir, _ = exported_run
    images, _, reference = validation
    logits = _tflite_logits(os.path.join(train_dir, "export", "float16.tflite"), images)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-2 * np.abs(reference).max())
    assert np.abs(logits - reference).max() > 1e-6  # the weights really were rounded


def test_int8_is_integer_only_and_agrees_with_keras_on_the_top1(exported_run, validation):
    train_dir, payload = exported_run
    images, _, reference = validation
    path = os.path.join(train_dir, "export", "int8.tflite")
    interpreter = load_interpreter(pathlib.Path(path).read_bytes(), num_threads=1)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    logits = _tflite_logits(path, images)
    agreement = np.mean(logits.argmax(-1) == reference.argmax(-1))
    assert agreement >= 0.9
    assert payload["rows"][3]["agreement"] == pytest.approx(agreement)
    # Not a constant predictor: the Keras logits vary between images, and the int8 ones
    # follow them to a small part of their spread.
    spread = np.ptp(reference, axis=0).mean()
    assert spread > 1e-2
    assert np.abs(logits - reference).max() < 0.2 * spread
    float32, int8 = payload["rows"][1], payload["rows"][3]
    drop = 100 * (float32["accuracy"] - int8["accuracy"])
    assert payload["int8_accuracy_drop"] == pytest.approx(drop)
    assert payload["int8_accuracy_drop_exceeded"] == (payload["int8_accuracy_drop"] > 1.0)


def test_the_export_normalises_with_the_runs_recipe():
    """A crd2020 run validates on CIFAR-100's RGB constants (RepDistiller's Normalize of
    [0, 1] images); the export measures it on the same inputs."""
    from sskd_tf.export.exporter import run_data

    settings = {"dataset": "digits", "recipe": "crd2020", "take_train": 8, "take_test": 4}
    representative, images, labels = run_data(settings, ExportOptions(representative_samples=8))
    train_images, _, test_images, test_labels = datasets.load_arrays("digits")
    mean, std = np.array([0.5071, 0.4867, 0.4408]), np.array([0.2675, 0.2565, 0.2761])
    np.testing.assert_allclose(images, (test_images[:4] / 255 - mean) / std, atol=1e-5)
    np.testing.assert_allclose(representative, (train_images[:8] / 255 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(labels, test_labels[:4])


def test_an_int8_drop_beyond_the_threshold_is_flagged_in_the_report():
    rows = [{"format": name, "file": f"{name}.tflite", "size_bytes": 1024, "accuracy": accuracy,
             "agreement": 1.0, "max_abs_logit_difference": 0.0, "latency_ms": 1.0}
            for name, accuracy in (("keras", 0.9), ("float32", 0.9), ("float16", 0.9),
                                   ("int8", 0.87))]
    strict = report.build("run", {"student": "resnet8", "method": "svd"}, {"dataset": "digits"},
                          ExportOptions(int8_max_accuracy_drop=2.5), rows, 10, 5)
    assert strict["int8_accuracy_drop"] == pytest.approx(3.0)
    assert strict["int8_accuracy_drop_exceeded"] is True
    warning = "**WARNING: the int8 model's top-1 accuracy is 3.00 points below"
    assert warning in report.markdown(strict)
    lenient = report.build("run", {}, {"dataset": "digits"},
                           ExportOptions(int8_max_accuracy_drop=3.5), rows, 10, 5)
    assert lenient["int8_accuracy_drop_exceeded"] is False
    assert "WARNING" not in report.markdown(lenient)


def test_export_mode_replaces_the_export_of_a_finished_run(exported_run):
    train_dir, _ = exported_run
    flag_values = _flag_values("--mode=export", f"--train_dir={train_dir}",
                               "--representative_samples=16", "--latency_runs=2")
    modes.run(flag_values.mode, flag_values)
    with open(os.path.join(train_dir, "export", "report.json")) as handle:
        payload = json.load(handle)
    assert payload["representative_samples"] == 16 and payload["latency_runs"] == 2
    assert len(payload["rows"]) == 4
    assert not glob.glob(os.path.join(train_dir, ".export-*"))


def test_a_student_of_another_family_converts_to_int8(tmp_path):
    saved_model = str(tmp_path / "mobilenet")
    student = models.logits_model(models.build_model("mobilenet_student", 10))
    student.export(saved_model, verbose=False)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    path = tmp_path / "int8.tflite"
    path.write_bytes(convert(saved_model, "int8", images))
    logits, reference = _tflite_logits(str(path), images), student(images).numpy()
    assert logits.shape == (4, 10)
    assert np.abs(logits - reference).max() < 0.2 * np.ptp(reference)


class _Singular(keras.layers.Layer):
    def call(self, inputs):
        return tf.linalg.svd(tf.reshape(inputs, (-1, 4, 8)), compute_uv=False)


def test_an_op_the_converter_cannot_take_is_named_in_one_line(tmp_path):
    inputs = keras.Input((32,))
    model = keras.Model(inputs, keras.layers.Dense(3)(_Singular(name="singular")(inputs)))
    model.export(str(tmp_path), verbose=False)
    with pytest.raises(UserError) as raised:
        convert(str(tmp_path), "float32")
    message = str(raised.value)
    assert "op tf.Svd in layer" in message and "singular" in message and "\n" not in message


def test_a_run_with_unreadable_results_is_one_user_error(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the results of a finished run from .*"
                                        "results.json \\(not valid JSON") as raised:
        export_run(str(tmp_path), ExportOptions(verbose=0))
    assert "\n" not in str(raised.value)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(UserError, match="holds a damaged run: no run.json"):
        export_run(str(tmp_path), ExportOptions(verbose=0))


def test_a_missing_run_dir_and_a_corrupt_student_are_one_line(exported_run, tmp_path):
    train_dir, _ = exported_run
    damaged = str(tmp_path / "damaged")
    shutil.copytree(train_dir, damaged, ignore=shutil.ignore_patterns("checkpoints", "export"))
    with open(os.path.join(damaged, "student.keras"), "wb") as handle:
        handle.write(b"not a keras file")
    (missing, _), (corrupt, _) = main_errors(
        ["--mode=export", f"--train_dir={tmp_path / 'missing'}"],
        ["--mode=export", f"--train_dir={damaged}"])
    assert "no such directory" in missing
    assert "cannot read" in corrupt and "student.keras" in corrupt


def test_an_int8_drop_beyond_the_threshold_warns(exported_run, tmp_path, caplog):
    """--int8_max_accuracy_drop=-1 (any drop, even a gain, beyond it): the WARNING line is
    logged at absl's WARNING level (on stderr in main.py) and heads report.md in bold."""
    train_dir = str(tmp_path / "copy")
    shutil.copytree(exported_run[0], train_dir)
    payload = export_run(train_dir, ExportOptions(representative_samples=8, latency_runs=1,
                                                  int8_max_accuracy_drop=-1.0, verbose=0))
    assert payload["int8_accuracy_drop_exceeded"] is True
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "absl" and record.levelname == "WARNING"]
    assert any(message.startswith("WARNING: the int8 model's top-1 accuracy is")
               for message in warnings), warnings
    with open(os.path.join(train_dir, "export", "report.md")) as handle:
        title, _, warning = handle.read().splitlines()[:3]
    assert title.startswith("# LiteRT export of") and warning.startswith("**WARNING: the int8")


def test_a_conversion_that_fails_leaves_the_export_as_it_was(exported_run, tmp_path,
                                                             monkeypatch):
    """The export is written whole or not at all: an int8 conversion that fails after
    float32 and float16 were written leaves the earlier export/ untouched and no
    temporary directory."""
    train_dir = str(tmp_path / "copy")
    shutil.copytree(exported_run[0], train_dir)
    before = {name: pathlib.Path(train_dir, "export", name).read_bytes()
              for name in sorted(os.listdir(os.path.join(train_dir, "export")))}
    real_convert = exporter.convert

    def int8_fails(saved_model, name, representative=None):
        if name == "int8":
            raise UserError("cannot convert to int8 (simulated)")
        return real_convert(saved_model, name, representative)

    monkeypatch.setattr(exporter, "convert", int8_fails)
    with pytest.raises(UserError, match="simulated"):
        export_run(train_dir, ExportOptions(representative_samples=8, latency_runs=1, verbose=0))
    after = {name: pathlib.Path(train_dir, "export", name).read_bytes()
             for name in sorted(os.listdir(os.path.join(train_dir, "export")))}
    assert after == before
    assert not glob.glob(os.path.join(train_dir, ".export-*"))
