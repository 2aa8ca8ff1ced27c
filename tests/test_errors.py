"""User errors and bugs told apart (one line, exit 2 / exit 1 with a log), and hostile
or broken inputs: each is one line and exit 2, never a traceback, never runs code."""
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest
import scipy.io

from sskd_tf import data as datasets
from sskd_tf import models
from sskd_tf.data import catalog, digits
from sskd_tf.distill import build_method
from sskd_tf.errors import UserError, one_line
from sskd_tf.models.mat_weights import load_mat_weights, save_mat_weights
from sskd_tf.training import files
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import train
from sskd_tf.training.teacher import load_teacher_weights
from sskd_tf.training.strategy import make_strategy

from main_cli import ERROR_PREFIX, REPO, main_error, main_errors

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
RUN = ("--dataset=digits", "--image_size=8", "--teacher=resnet8", "--take_train=64", "--take_test=32",
       "--batch_size=32", "--epochs=1")
TINY = dict(teacher="resnet8", dataset="digits", image_size=8, take_train=64, take_test=32, batch_size=32,
            epochs=1, verbose=0)


def test_one_line_keeps_the_first_line_and_drops_tensor_reprs():
    per_replica = ("Attempt to convert a value (PerReplica:{\n  0: <tf.Tensor: shape=(2,), "
                   "dtype=float32, numpy=array([1., 2.], dtype=float32)>\n}) to a Tensor.")
    assert one_line(per_replica) == "Attempt to convert a value ( ..."
    assert one_line("bad value tf.Tensor([1 2], shape=(2,), dtype=int32) here") == "bad value ..."
    assert one_line("first   line\nsecond line") == "first line"
    assert one_line("x" * 1200) == "x" * 996 + " ..."
    assert one_line("") == ""


def test_one_line_unwraps_the_report_keras_adds_around_a_layer_error():
    class Refuses(keras.layers.Layer):
        def call(self, inputs):
            raise UserError("tap 0: the maps differ")

    with pytest.raises(UserError) as raised:
        Refuses()(np.zeros((2, 3), "float32"))
    assert "Arguments received" in str(raised.value)
    assert one_line(raised.value) == "tap 0: the maps differ"


@pytest.mark.parametrize("mistake", [
    lambda: build_method("bogus"),
    lambda: models.build_model("resnet7", 10),
    lambda: build_method("svd", weight=-1.0),
    lambda: build_method("svd", wieght=2.0),
    lambda: make_strategy("tpu"),
    lambda: datasets.build_datasets("digits", take_train=10, take_test=0),
    lambda: load_teacher_weights(models.build_model("resnet8", 10), "/nonexistent/teacher.keras"),
], ids=["method", "model", "option", "option_name", "strategy", "empty_split", "teacher_file"])
def test_mistakes_a_user_can_fix_are_user_errors(mistake):
    with pytest.raises(UserError) as raised:
        mistake()
    assert "\n" not in str(raised.value)


BUG_SCRIPT = textwrap.dedent("""
    import sys
    import tensorflow as tf
    from absl import app
    import main
    from sskd_tf import modes

    def a_bug(mode, flag_values):
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        per_replica = strategy.run(lambda: tf.ones([3, 3]))
        raise ValueError(f"Attempt to convert a value ({per_replica}) to a Tensor.")

    modes.run = a_bug
    sys.argv[0] = "main.py"
    app.run(main.main, flags_parser=main.parse_flags)
""")


def _run_bug(train_dir):
    completed = subprocess.run([sys.executable, "-c", BUG_SCRIPT, f"--train_dir={train_dir}"],
                               cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, completed.stderr[-2000:]
    lines = [line for line in completed.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, completed.stderr[-2000:]
    for leak in ("Traceback", "PerReplica:{", "tf.Tensor", "numpy="):
        assert leak not in completed.stderr
    assert lines[0].startswith(
        f"{ERROR_PREFIX} internal error: ValueError: Attempt to convert a value ( ...; full traceback")
    log = lines[0].rsplit("full traceback in ", 1)[1]
    with open(log) as handle:
        traceback = handle.read()
    assert "Traceback" in traceback and "a_bug" in traceback and "PerReplica:{" in traceback
    return log


def test_a_bug_is_an_internal_error_with_its_traceback_in_the_train_dir(tmp_path):
    assert _run_bug(tmp_path / "run") == str(tmp_path / "run" / "error.log")


def test_the_traceback_goes_to_a_temporary_file_when_the_train_dir_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    log = _run_bug(blocker / "run")
    assert os.path.dirname(log) == tempfile.gettempdir()
    os.remove(log)


# Hostile and broken inputs, each through main.py.

def test_a_keras_teacher_with_a_lambda_layer_and_an_unwritable_train_dir_through_main_py(
        tmp_path):
    """Each one line from main.py (in one process): a teacher holding code is refused
    without running it; a --train_dir under a file is not a writable directory."""
    marker = tmp_path / "the_lambda_ran"
    inputs = keras.Input((32, 32, 3))
    touch = keras.layers.Lambda(eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"))
    keras.Model(inputs, touch(inputs)).save(tmp_path / "lambda.keras")
    marker.unlink()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    (lambda_error, _), (dir_error, _) = main_errors(
        [*RUN, "--method=svd", f"--train_dir={tmp_path / 'run'}",
         f"--teacher_weights={tmp_path / 'lambda.keras'}"],
        [*RUN, "--method=none", f"--train_dir={blocker / 'run'}"])
    assert "cannot read" in lambda_error and "Lambda" in lambda_error
    assert not marker.exists()
    assert f"--train_dir={blocker / 'run'} is not a writable directory (Not a directory)" \
        in dir_error
    assert blocker.read_text() == "not a directory"


@keras.saving.register_keras_serializable(package="sskd_tests_hostile")
class UnknownLayer(keras.layers.Layer):
    def call(self, inputs):
        return inputs


def test_a_keras_teacher_with_a_custom_object_is_refused(tmp_path, monkeypatch):
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, UnknownLayer()(inputs)).save(tmp_path / "custom.keras")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "sskd_tests_hostile>UnknownLayer")
    with pytest.raises(UserError, match="--teacher_weights: cannot read .*could not be deserialized"):
        load_teacher_weights(models.build_model("resnet8", 10), str(tmp_path / "custom.keras"))


def test_a_truncated_keras_teacher_is_refused(tmp_path):
    path = tmp_path / "teacher.keras"
    models.build_model("resnet8", 10).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="--teacher_weights: cannot read"):
        load_teacher_weights(models.build_model("resnet8", 10), str(path))


def test_a_truncated_mat_teacher_is_refused(tmp_path):
    path = tmp_path / "resnet8.mat"
    save_mat_weights(models.build_model("resnet8", 10), str(path), "resnet")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match=f"cannot read {path} as a .mat file") as raised:
        load_teacher_weights(models.build_model("resnet8", 10), str(path))
    assert "\n" not in str(raised.value)


def test_a_mat_file_of_strings_is_refused_before_anything_is_assigned(tmp_path):
    model = models.build_model("resnet8", 10)
    path = str(tmp_path / "resnet8.mat")
    save_mat_weights(model, path, "resnet")
    arrays = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    name = sorted(arrays)[0]
    arrays[name] = np.full(arrays[name].shape, "x")
    scipy.io.savemat(path, arrays)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(UserError, match=rf"1 not real numbers: {name.split('/', 1)[1]} is <U1"):
        load_mat_weights(model, path, "resnet")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["truncated", "float_images", "object_labels"])
def test_a_damaged_digits_bundle_is_one_line(tmp_path, monkeypatch, damage):
    path = tmp_path / "digits.npz"
    with np.load(digits.NPZ_PATH) as bundle:
        arrays = dict(bundle)
    if damage == "float_images":
        arrays["images"] = arrays["images"].astype(np.float32)
    np.savez(path, **arrays)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    if damage == "object_labels":
        np.savez(path, **dict(arrays, labels=np.array([{"a": 1}] * 3, dtype=object)))
    monkeypatch.setattr(digits, "NPZ_PATH", str(path))
    expected = "holds other arrays" if damage == "float_images" else "cannot be read"
    with pytest.raises(UserError, match=f"{expected}.*git checkout") as raised:
        datasets.load_arrays("digits")
    assert "\n" not in str(raised.value)


def test_a_flagfile_that_includes_itself_is_one_line(tmp_path):
    first, second = tmp_path / "first.flags", tmp_path / "second.flags"
    first.write_text(f"--mode=summary\n--flagfile={second}\n")
    second.write_text(f"# a comment\n--flagfile={first}\n")
    error, _ = main_error(f"--flagfile={first}")
    assert f"includes itself ({first} -> {second} -> {first})" in error
    second.write_text("--teacher=resnet8\n")
    first.write_text(f"--flagfile={first}\n")
    error, _ = main_error("--flagfile", str(first))
    assert "includes itself" in error


def test_a_train_dir_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=f"--train_dir={blocker} is not a writable directory"):
        train(RunConfig(method="none", train_dir=str(blocker), **TINY))
    assert blocker.read_text() == "not a directory"


def _disk_of(size):
    """A process whose files cannot grow past `size` bytes, as on a full disk: its
    writes beyond fail with EFBIG inside TensorFlow's own (C++) checkpoint writer."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_leaves_nothing(tmp_path):
    train_dir = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "main.py", *RUN, "--method=none", f"--train_dir={train_dir}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
        preexec_fn=_disk_of(150_000))
    assert completed.returncode == 2, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert errors == [f"{ERROR_PREFIX} cannot write a checkpoint in {train_dir / 'checkpoints'}: "
                      "File too large; free some space (or fix its permissions) and run the same "
                      "command again: it resumes from the last complete checkpoint"]
    assert "Traceback" not in completed.stderr
    assert os.listdir(train_dir / "checkpoints") == []
    assert not (train_dir / "results.json").exists()


def test_a_full_disk_while_writing_the_results_removes_what_it_wrote(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(files.json, "dump", disk_full)
    (tmp_path / "history.csv").write_text("epoch\n0\n")
    with pytest.raises(UserError, match="cannot write the results in .*: No space left on device"):
        with files.writing("the results", str(tmp_path)):
            (tmp_path / "student.keras").write_text("half")
            files.write_json(str(tmp_path / "results.json"), {"a": 1})
    assert os.listdir(tmp_path) == ["history.csv"]


def test_a_bug_while_writing_is_not_dressed_up_as_a_full_disk(tmp_path):
    with pytest.raises(TypeError):
        with files.writing("the results", str(tmp_path)):
            raise TypeError("a bug of ours")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_images_with_nan_or_inf_pixels_are_refused(bad):
    images = np.zeros((5, 32, 32, 3), np.float32)
    images[3, 7, 1, 2] = bad
    with pytest.raises(UserError, match=r"folder:x train: 1 of 5 images hold NaN or infinite "
                                        r"pixels \(the first: image 3\)"):
        catalog.check_finite_images(images, "folder:x train")
    catalog.check_finite_images(np.zeros((5, 32, 32, 3), np.uint8), "folder:x train")
    catalog.check_finite_images(np.zeros((5, 32, 32, 3), np.float32), "folder:x train")
    info = datasets.get_dataset_info("digits")
    labels = np.zeros(5, np.int64)
    with pytest.raises(UserError, match="digits test: 1 of 5 images hold NaN"):
        catalog._check_arrays(info, (np.zeros((5, 32, 32, 3), np.uint8), labels, images, labels))
