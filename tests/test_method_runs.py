"""One epoch of every registered method on a tiny slice of digits, with one shared
teacher: svd through the command line of main.py, the others in-process."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from sskd_tf.data import digits
from sskd_tf.distill.names import METHOD_NAMES
from sskd_tf.training.callbacks import read_history
from sskd_tf.training.run import RunConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(teacher="resnet8", student="resnet8", dataset="digits", batch_size=64,
            take_train=128, take_test=64, epochs=1, verbose=0)
NO_INIT_PHASE = {"fitnet": {"init_epochs": 0}, "fsp": {"init_epochs": 0}}
CLI_METHOD = "svd"
IN_PROCESS_METHODS = [name for name in METHOD_NAMES if name != CLI_METHOD]
# main.py has no flag for a slice of the data: the command line runs main.py as
# `python main.py` would, with the bundled digits file replaced by a slice of it.
MAIN_ON_DIGITS_FILE = """
import runpy, sys
from sskd_tf.data import digits
digits.NPZ_PATH = sys.argv.pop(1)
sys.argv[0] = "main.py"
runpy.run_path("main.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp("teacher"))
    train(RunConfig(method="none", train_dir=train_dir, **TINY))
    return os.path.join(train_dir, "student.keras")


def tiny_digits_file(path):
    """The bundled digits.npz with only the first TINY examples of each split."""
    with np.load(digits.NPZ_PATH) as bundle:
        arrays = dict(bundle)
    arrays["train_indices"] = arrays["train_indices"][:TINY["take_train"]]
    arrays["test_indices"] = arrays["test_indices"][:TINY["take_test"]]
    np.savez(path, **arrays)
    return str(path)


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
    command = [sys.executable, "-c", MAIN_ON_DIGITS_FILE, tiny_digits_file(tmp_path / "digits.npz"),
               "--teacher=resnet8", "--student=resnet8", f"--method={CLI_METHOD}",
               "--dataset=digits", "--epochs=1", "--batch_size=64",
               f"--teacher_weights={teacher_weights}", f"--train_dir={tmp_path / 'run'}"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = check_run(str(tmp_path / "run"), epochs=1)
    assert results["method"] == CLI_METHOD and results["teacher"] == "resnet8"
    with open(os.path.join(os.path.dirname(teacher_weights), "results.json")) as handle:
        teacher = json.load(handle)
    assert results["teacher_val_accuracy"] == pytest.approx(teacher["last_val_accuracy"])
