"""End-to-end runs on a tiny slice of digits: outputs, TensorBoard, resume and the
command line (several replicas: tests/test_replicas.py, tests/test_multi_worker.py)."""
import glob
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.training import callbacks as run_callbacks
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import train

from conftest import TINY
from main_cli import main_errors


def _scalars(event_dir):
    tags = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_a_run_trains_the_teacher_first_then_distils(distilled_run):
    train_dir, results = distilled_run
    assert os.path.exists(os.path.join(train_dir, "teacher", "results.json"))
    assert results["method"] == "svd" and results["teacher"] == "resnet8"
    assert 0.0 <= results["last_val_accuracy"] <= 1.0
    assert results["best_val_accuracy"] == max(results["val_accuracy"])
    assert results["teacher_val_accuracy"] is not None and results["wall_time_s"] > 0
    with open(os.path.join(train_dir, "results.json")) as handle:
        assert json.load(handle) == results


def test_outputs_are_a_checkpoint_a_keras_file_and_an_export_without_taps(distilled_run):
    train_dir, _ = distilled_run
    assert tf.train.latest_checkpoint(os.path.join(train_dir, "checkpoints"))
    student = keras.models.load_model(os.path.join(train_dir, "student.keras"))
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)  # TINY: 8x8
    out = student(images)
    assert set(out) == {"logits", "features"}
    exported = tf.saved_model.load(os.path.join(train_dir, "student_export"))
    logits = exported.serve(images)
    np.testing.assert_allclose(logits.numpy(), out["logits"].numpy(), rtol=1e-5, atol=1e-5)
    assert np.ptp(out["logits"].numpy(), axis=0).max() > 1e-3  # the images give other logits


def test_tensorboard_has_every_loss_term_the_clip_ratio_and_the_learning_rate(distilled_run):
    train_dir, _ = distilled_run
    train_tags = _scalars(os.path.join(train_dir, "logs", "train"))
    for tag in ("epoch_loss", "epoch_ce_loss", "epoch_wd_loss", "epoch_kd_loss", "epoch_svd_loss",
                "epoch_clip_ratio", "epoch_accuracy", "epoch_learning_rate"):
        assert tag in train_tags, tag
    validation_tags = _scalars(os.path.join(train_dir, "logs", "validation"))
    assert "epoch_accuracy" in validation_tags and "epoch_loss" in validation_tags
    text_tags = set()
    for path in glob.glob(os.path.join(train_dir, "logs", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            text_tags.update(value.tag for value in event.summary.value)
    assert "run_settings" in text_tags


def test_a_finished_run_is_not_overwritten(distilled_run):
    train_dir, _ = distilled_run
    with pytest.raises(ValueError, match="holds a finished run; pass --overwrite"):
        train(RunConfig(method="svd", train_dir=train_dir, **TINY))


class _CrashAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.crash_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_epoch:
            raise RuntimeError("simulated crash")


def _optimizer_steps(train_dir):
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("optimizer/") and "iteration" in n]
    assert len(names) == 1, names
    return int(reader.get_tensor(names[0]))


@pytest.mark.slow  # the short checks: tests/test_kill_anywhere.py and the replay test of tests/test_robustness.py
def test_an_interrupted_run_resumes_at_the_right_epoch(tmp_path, monkeypatch, distilled_run):
    teacher_weights = os.path.join(distilled_run[0], "teacher", "student.keras")
    config = RunConfig(method="svd", train_dir=str(tmp_path), teacher_weights=teacher_weights,
                       **dict(TINY, epochs=3))
    standard = run_callbacks.standard_callbacks
    monkeypatch.setattr(run_callbacks, "standard_callbacks",
                        lambda *args: standard(*args) + [_CrashAtEpoch(2)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config)
    assert not os.path.exists(tmp_path / "results.json")
    assert _optimizer_steps(str(tmp_path)) == 2 * 2
    monkeypatch.setattr(run_callbacks, "standard_callbacks", standard)
    results = train(config)
    assert len(results["val_accuracy"]) == 3
    assert _optimizer_steps(str(tmp_path)) == 3 * 128 // 64 + 1  # the authors' step count
    epochs = [int(row["epoch"]) for row in run_callbacks.read_history(str(tmp_path))]
    assert epochs == [0, 1, 2]


BAD_FLAGS = [
    (["--method=bogus"], "flag --method=bogus: value should be one of"),
    (["--epochs=0"], "flag --epochs=0"),
    (["--lr_decay_points=0.6,0.3"], "strictly increasing"),
    (["--dataset=digits", "--image_size=8", "--teacher_weights=/nonexistent.keras",
      "--teacher=resnet8"], "--teacher_weights: no such file '/nonexistent.keras'"),
]


def test_bad_flags_exit_with_one_line():
    errors = main_errors(*[argv for argv, _ in BAD_FLAGS])
    for (argv, message), (error, _) in zip(BAD_FLAGS, errors):
        assert message in error, argv


def test_history_records_the_training_time_of_every_epoch(distilled_run):
    rows = run_callbacks.read_history(distilled_run[0])
    assert len(rows) == 1 and float(rows[0]["train_time_s"]) > 0


def test_a_cached_teacher_trained_otherwise_is_not_reused_silently(tmp_path, distilled_run):
    shutil.copytree(os.path.join(distilled_run[0], "teacher"), tmp_path / "teacher")
    with pytest.raises(ValueError, match=r"teacher holds a teacher of other settings: epochs 1 "
                                         r"\(asked: 2\); choose another --train_dir"):
        train(RunConfig(method="svd", train_dir=str(tmp_path), **dict(TINY, epochs=2)))
    assert sorted(os.listdir(tmp_path)) == [".lock", "teacher"]
