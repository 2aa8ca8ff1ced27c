"""Faults a long run must survive or report clearly: non-finite steps, kills,
interrupts, bad files; and determinism."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf import models
from sskd_tf.data import pipeline
from sskd_tf.distill import build_method
from sskd_tf.errors import TrainingDiverged
from sskd_tf.training import files
from sskd_tf.training.callbacks import NonFiniteGuard, saved_progress
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import train

from conftest import TINY as SESSION_TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
TINY = dict(teacher="resnet8", student="resnet8", dataset="digits", image_size=8, batch_size=32,
            take_train=128, take_test=64, verbose=0)


def _toy_distiller():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(seed=0))(inputs)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.RandomNormal(seed=1))(hidden)
    student = keras.Model(inputs, {"logits": logits, "features": [hidden]})
    distiller = Distiller(None, student, loss_of(build_method("none")), steps_in_epoch=10)
    distiller.build((None, 4))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    distiller.optimizer.build(distiller.trainable_variables)
    return distiller


def _state(distiller):
    return [v.numpy().copy() for v in distiller.student.weights + distiller.optimizer.variables]


def test_a_non_finite_step_is_skipped_and_counted():
    distiller = _toy_distiller()
    labels = tf.constant([0, 1, 0])
    good = tf.ones((3, 4))
    distiller.train_step((good, labels))
    before = _state(distiller)
    logs = distiller.train_step((tf.fill((3, 4), np.nan), labels))
    for a, b in zip(before, _state(distiller)):
        np.testing.assert_array_equal(a, b)
    assert float(logs["skipped_steps"]) == 1.0
    assert int(distiller.consecutive_skips.numpy()) == 1
    assert np.isfinite(float(logs["loss"]))
    distiller.train_step((good, labels))
    assert int(distiller.consecutive_skips.numpy()) == 0
    assert int(distiller.optimizer.iterations.numpy()) == 2


def test_the_guard_stops_after_consecutive_skips():
    distiller = _toy_distiller()
    guard = NonFiniteGuard(max_consecutive=2)
    guard.set_model(distiller)
    nan_batch = (tf.fill((3, 4), np.nan), tf.constant([0, 1, 0]))
    distiller.train_step(nan_batch)
    guard.on_train_batch_end(0)
    distiller.train_step(nan_batch)
    with pytest.raises(TrainingDiverged, match="2 consecutive steps had a non-finite loss"):
        guard.on_train_batch_end(1)


def test_a_run_fed_nan_features_stops_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
    real_training = pipeline.RunData.training
    steps_per_epoch = 4  # 128 examples in batches of 32

    def poisoned_after_first_epoch(self, start_step=0, full_batches=False, inputs=()):
        assert not inputs  # method "none" reads the images alone
        def poison(step, batch):
            images, labels = batch
            return tf.where(step >= steps_per_epoch, np.nan, images), labels

        return real_training(self, start_step, full_batches, inputs).enumerate(start_step).map(poison)

    monkeypatch.setattr(pipeline.RunData, "training", poisoned_after_first_epoch)
    config = RunConfig(method="none", train_dir=str(tmp_path), epochs=3, max_consecutive_skips=3, **TINY)
    with pytest.raises(TrainingDiverged):
        train(config)
    assert not os.path.exists(tmp_path / "results.json")
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    assert int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 1
    for name in reader.get_variable_to_shape_map():
        if name.startswith("student/"):
            value = reader.get_tensor(name)
            assert np.all(np.isfinite(value)), name


RUN_SCRIPT = textwrap.dedent("""
    import sys
    from sskd_tf.training.config import RunConfig
    from sskd_tf.training.run import train
    try:
        train(RunConfig(teacher="resnet8", student="resnet8", method="none", dataset="digits", image_size=8,
                        batch_size=32, take_train=256, take_test=64, epochs=3, verbose=0,
                        train_dir=sys.argv[1]))
    except KeyboardInterrupt:
        sys.exit(130)
""")
# 256 examples in batches of 32: 8 steps an epoch, and the authors' count for 3 epochs,
# int(3 * 256) // 32 + 1 = 25 steps (the last epoch has 9).
STEPS_PER_EPOCH, EPOCHS, TOTAL_STEPS = 8, 3, 25


def _optimizer_steps(train_dir):
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
    name = next(n for n in reader.get_variable_to_shape_map()
                if n.startswith("optimizer/") and "iteration" in n)
    return int(reader.get_tensor(name))


def _start_run(train_dir):
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, train_dir], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_first_checkpoint(train_dir, process, timeout=600):
    state = os.path.join(train_dir, "checkpoints", "checkpoint")
    deadline = time.time() + timeout
    while not os.path.exists(state):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


@pytest.mark.slow  # the short check: tests/test_kill_anywhere.py and the replay test below
def test_a_killed_run_resumes_to_the_same_number_of_steps(tmp_path):
    train_dir = str(tmp_path)
    process = _start_run(train_dir)
    _wait_for_first_checkpoint(train_dir, process)
    time.sleep(np.random.default_rng().uniform(0.0, 2.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(train_dir, "results.json"))
    finished = subprocess.run([sys.executable, "-c", RUN_SCRIPT, train_dir], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _optimizer_steps(train_dir) == TOTAL_STEPS
    with open(os.path.join(train_dir, "results.json")) as handle:
        assert len(json.load(handle)["val_accuracy"]) == EPOCHS


@pytest.mark.slow  # the short check: the SIGINT half of the replay test below
def test_sigint_saves_a_checkpoint_mid_epoch_and_the_run_resumes_from_it(tmp_path):
    train_dir = str(tmp_path)
    process = _start_run(train_dir)
    _wait_for_first_checkpoint(train_dir, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 130, stderr.decode()[-2000:]
    epochs, step = saved_progress(train_dir)
    assert epochs == 1 and STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH
    finished = subprocess.run([sys.executable, "-c", RUN_SCRIPT, train_dir], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _optimizer_steps(train_dir) == TOTAL_STEPS


REPLAY_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import keras, numpy as np, tensorflow as tf
    from sskd_tf.training import callbacks as run_callbacks
    from sskd_tf.training.config import RunConfig
    from sskd_tf.training.run import train

    from sskd_tf import models

    # FitNet from an untrained wrn16_1 teacher (saved once, in argv[2]'s folder) to
    # vgg_student's first convolutions: its 1x1 regressors (64 -> 16, 128 -> 32, 256 -> 64)
    # are the method's own variables, its initialisation epoch then its training epoch make
    # the run's two, and the student's dropout draws from a keras SeedGenerator: all must
    # be replayed.
    teacher_file = os.path.join(os.path.dirname(sys.argv[2]), "wrn16_1.keras")

    def config(train_dir):
        return RunConfig(teacher="wrn16_1", student="vgg_student",
                         student_taps=("block0_conv0", "block1_conv0", "block2_conv0"),
                         teacher_weights=teacher_file, method="fitnet",
                         method_options={"init_epochs": 1}, dataset="digits", batch_size=32,
                         take_train=80, take_test=32, epochs=1, seed=3, deterministic=True,
                         verbose=0, train_dir=train_dir)

    class SignalSelf(keras.callbacks.Callback):
        # Runs after RunCheckpoint: at the end of `epoch`'s batch `batch`, or of the epoch itself.
        def __init__(self, signum, epoch, batch=None):
            super().__init__()
            self.signum, self.epoch, self.batch, self.current = signum, epoch, batch, None
        def on_epoch_begin(self, epoch, logs=None):
            self.current = epoch
        def on_train_batch_end(self, batch, logs=None):
            if (self.current, batch) == (self.epoch, self.batch):
                os.kill(os.getpid(), self.signum)
        def on_epoch_end(self, epoch, logs=None):
            if self.batch is None and epoch == self.epoch:
                os.kill(os.getpid(), self.signum)

    standard = run_callbacks.standard_callbacks
    def train_until(train_dir, signal_self):
        run_callbacks.standard_callbacks = lambda *args: standard(*args) + [signal_self]
        train(config(train_dir))

    def checkpoint_values(train_dir):
        reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                if not name.startswith(("wall_time", "save_counter", "_CHECKPOINTABLE",
                                        "history"))}

    def history(train_dir):
        # The checkpointed history, without the epochs' timings.
        reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
        rows = json.loads(reader.get_tensor("history/.ATTRIBUTES/VARIABLE_VALUE").decode())
        return [{k: v for k, v in row.items() if k != "train_time_s"} for row in rows]

    uninterrupted, interrupted = sys.argv[2:]
    if sys.argv[1] == "interrupt":
        keras.utils.set_random_seed(0)
        models.build_model("wrn16_1", 10).save(teacher_file)
        train(config(uninterrupted))
        try:
            train_until(interrupted, SignalSelf(signal.SIGINT, epoch=0, batch=0))
        except KeyboardInterrupt:
            print(json.dumps(run_callbacks.saved_progress(interrupted)), flush=True)
        train_until(interrupted, SignalSelf(signal.SIGKILL, epoch=0))
    else:
        progress = run_callbacks.saved_progress(interrupted)
        train(config(interrupted))
        expected, replayed = checkpoint_values(uninterrupted), checkpoint_values(interrupted)
        students = [keras.models.load_model(os.path.join(d, "student.keras")).get_weights()
                    for d in sys.argv[2:]]
        print(json.dumps({
            "progress_at_kill": progress,
            "names": sorted(expected) == sorted(replayed),
            "differing": [n for n in expected if not np.array_equal(expected[n], replayed.get(n))],
            "random_states": sum(n.startswith("random_states/") for n in expected),
            "method_variables": sum(n.startswith("method_weights/") for n in expected) > 0,
            "student_weights_equal": all(np.array_equal(a, b) for a, b in zip(*students)),
            "history_equal": history(uninterrupted) == history(interrupted),
        }))
""")


def test_a_run_interrupted_by_sigint_and_by_kill_replays_the_uninterrupted_run(tmp_path):
    """--seed --deterministic: a FitNet run (a teacher, the method's own regressors, an
    initialisation stage, dropout) interrupted mid-epoch (SIGINT, resumed in the same
    process), then killed (-9) at the end of its initialisation epoch and resumed in a new
    process, ends with every checkpointed variable bit-equal to the uninterrupted run's,
    and the same history (the interrupted epoch's averages included). Progress is (finished epochs, global
    step): 80 examples in batches of 32 make epochs of 3 steps (ceil(80 / 32))."""
    dirs = [str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")]
    killed = subprocess.run([sys.executable, "-c", REPLAY_SCRIPT, "interrupt", *dirs], cwd=REPO,
                            env=ENV, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads(killed.stdout.splitlines()[-1]) == [0, 2]
    resumed = subprocess.run([sys.executable, "-c", REPLAY_SCRIPT, "resume", *dirs], cwd=REPO,
                             env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout.splitlines()[-1])
    assert report == {"progress_at_kill": [1, 3], "names": True, "differing": [],
                      "random_states": 1, "method_variables": True,
                      "student_weights_equal": True, "history_equal": True}


DETERMINISM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from sskd_tf.training.config import RunConfig
    from sskd_tf.training.run import train
    import keras
    for train_dir in sys.argv[1:]:
        train(RunConfig(teacher="resnet8", student="resnet8", method="none", dataset="digits", image_size=8,
                        batch_size=32, take_train=96, take_test=32, epochs=1, verbose=0, seed=7,
                        deterministic=True, train_dir=train_dir))
    first, second = (keras.models.load_model(d + "/student.keras") for d in sys.argv[1:])
    print(all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights())))
""")


@pytest.mark.slow  # the short check: the replay test below, also under --deterministic
def test_two_deterministic_runs_give_identical_weights(tmp_path):
    result = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(tmp_path / "a"), str(tmp_path / "b")],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True"


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, teacher_run):
    """The session teacher's run, its results removed (as if killed after its last epoch),
    one checkpoint's data cut short."""
    train_dir = tmp_path / "run"
    shutil.copytree(teacher_run, train_dir)
    os.remove(train_dir / "results.json")
    for data_file in (train_dir / "checkpoints").glob("*.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot resume from .*delete its checkpoints/ or pass --overwrite"):
        train(RunConfig(method="none", train_dir=str(train_dir), **SESSION_TINY))


def test_teacher_weights_of_another_architecture_are_a_clear_error(tmp_path):
    weights = str(tmp_path / "resnet8.keras")
    models.build_model("resnet8", 10, (8, 8, 3)).save(weights)
    config = RunConfig(method="svd", train_dir=str(tmp_path / "run"), teacher_weights=weights,
                       **dict(SESSION_TINY, teacher="resnet14"))
    with pytest.raises(ValueError, match=r"does not fit resnet14: stage0_block1_conv0/kernel missing"):
        train(config)


def test_a_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    path = tmp_path / "results.json"

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        files.write_json(str(path), {"a": 1})
    assert list(tmp_path.iterdir()) == []
