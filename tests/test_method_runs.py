"""One epoch of every registered method on a tiny slice of digits, with one shared
teacher: svd through the command line of main.py, the others in-process."""
import json
import math
import os
import subprocess
import sys

import pytest

from sskd_tf.distill.names import METHOD_NAMES
from sskd_tf.training.callbacks import read_history
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(teacher="resnet8", student="resnet8", dataset="digits", image_size=8, batch_size=64,
            take_train=128, take_test=64, epochs=1, verbose=0)
NO_INIT_PHASE = {"fitnet": {"init_epochs": 0}, "fsp": {"init_epochs": 0}}
CLI_METHOD = "svd"
IN_PROCESS_METHODS = [name for name in METHOD_NAMES if name != CLI_METHOD]


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp("teacher"))
    train(RunConfig(method="none", train_dir=train_dir, **TINY))
    return os.path.join(train_dir, "student.keras")


def check_run(train_dir, epochs):
    with open(os.path.join(train_dir, "results.json")) as handle:
        results = json.load(handle)
    assert results["epochs"] == epochs
    assert math.isfinite(results["last_val_accuracy"])
    assert math.isfinite(results["best_val_accuracy"])
    history = read_history(train_dir)
    assert len(history) == epochs
    assert all(math.isfinite(float(row["val_accuracy"])) for row in history)
    assert all(math.isfinite(float(row["loss"])) for row in history)
    return results


@pytest.mark.parametrize("method", IN_PROCESS_METHODS)
def test_every_method_trains_one_epoch(method, teacher_weights, tmp_path):
    train(RunConfig(method=method, method_options=NO_INIT_PHASE.get(method, {}),
                    teacher_weights=teacher_weights, train_dir=str(tmp_path), **TINY))
    results = check_run(str(tmp_path), epochs=1)
    assert results["method"] == method
    assert not os.path.exists(tmp_path / "teacher")


def test_the_init_phase_adds_its_epochs(teacher_weights, tmp_path):
    train(RunConfig(method="fitnet", method_options={"init_epochs": 1},
                    teacher_weights=teacher_weights, train_dir=str(tmp_path), **TINY))
    check_run(str(tmp_path), epochs=2)


def test_main_py_distils_with_svd(teacher_weights, tmp_path):
    command = [sys.executable, "main.py",
               "--teacher=resnet8", "--student=resnet8", f"--method={CLI_METHOD}",
               "--dataset=digits", "--image_size=8", "--epochs=1", "--batch_size=64",
               f"--take_train={TINY['take_train']}", f"--take_test={TINY['take_test']}",
               f"--teacher_weights={teacher_weights}", f"--train_dir={tmp_path / 'run'}"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = check_run(str(tmp_path / "run"), epochs=1)
    assert results["method"] == CLI_METHOD and results["teacher"] == "resnet8"
    with open(os.path.join(os.path.dirname(teacher_weights), "results.json")) as handle:
        teacher = json.load(handle)
    assert results["teacher_val_accuracy"] == pytest.approx(teacher["last_val_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("mixed_precision", ["none", "mixed_bfloat16"])
def test_svd_trains_with_the_gpu_options(mixed_precision, teacher_weights, tmp_path):
    """--svd_backend=batched with the decompositions requested on the CPU, in float32 and
    with a mixed_bfloat16 student and teacher: one epoch of the digits run, finite. Long
    (tracing the batched route takes minutes on 2 cores); the short checks of the same
    train step are tests/test_batched_backend.py and tests/test_mixed_precision.py."""
    train(RunConfig(method="svd", method_options={"backend": "batched",
                                                  "decomposition_device": "cpu"},
                    mixed_precision=mixed_precision, teacher_weights=teacher_weights,
                    train_dir=str(tmp_path), **TINY))
    check_run(str(tmp_path), epochs=1)
