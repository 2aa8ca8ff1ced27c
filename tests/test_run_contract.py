"""The run directory as a contract: every number a run reports is that run's own.

A run directory records the settings of its run (run.json) and refuses another's; one
process works in it at a time; the history results.json is built from lives in the
checkpoints, so a restart, a tampered or truncated history.csv or a kill between the
checkpoint and the CSV cannot change what the run reports."""
import dataclasses
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

from conftest import TINY
from main_cli import ERROR_PREFIX, REPO
from sskd_tf.errors import Interrupted, UserError
from sskd_tf.losses import loss_of
from sskd_tf.training import callbacks as run_callbacks
from sskd_tf.training import files, identity
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import train, with_train_dir
from test_data import _fake_cifar10

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
ALONE = dict(TINY, method="none", epochs=2)
# 128 examples in batches of 64, 2 epochs: the authors' int(2 * 128) // 64 + 1 = 5 steps.
ALONE_STEPS = 5


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(train_dir, results) of a finished 2-epoch run of resnet8 alone."""
    train_dir = str(tmp_path_factory.mktemp("finished"))
    return train_dir, train(RunConfig(train_dir=train_dir, **ALONE))


def _unfinished_copy(finished_run, tmp_path):
    """A copy of the finished run without its results (as if killed after its last epoch)."""
    train_dir = str(tmp_path / "copy")
    shutil.copytree(finished_run[0], train_dir)
    os.remove(os.path.join(train_dir, "results.json"))
    return train_dir


def _history(train_dir):
    return [{k: v for k, v in row.items() if k != "train_time_s"}
            for row in run_callbacks.read_history(train_dir)]


def _assert_same_history(train_dir, expected_dir):
    """The same epochs, steps and validation accuracies; the training averages to float
    rounding (two runs without --deterministic may add in another order)."""
    rows, expected = _history(train_dir), _history(expected_dir)
    assert [sorted(row) for row in rows] == [sorted(row) for row in expected]
    for row, want in zip(rows, expected):
        assert (row["epoch"], row["steps"], row["val_accuracy"]) == (
            want["epoch"], want["steps"], want["val_accuracy"])
        for name in row:
            assert float(row[name]) == pytest.approx(float(want[name]), rel=1e-5), name


def test_a_run_records_its_settings_and_their_fingerprint(finished_run):
    train_dir, _ = finished_run
    with open(os.path.join(train_dir, "run.json")) as handle:
        record = json.load(handle)
    settings = record["identity"]
    assert record["fingerprint"] == identity.fingerprint(settings)
    expected = dict(method="none", student="resnet8", dataset="digits", image_size=8,
                    take_train=128, take_test=64, recipe="kd_methods", epoch_cut="kd_methods",
                    batch_size=64, epochs=2, seed=0, strategy="default", teacher_identity=None,
                    method_options={"clip_scale": 1.0, "gradient_rule": None})
    assert {name: settings[name] for name in expected} == expected
    assert not set(settings) & set(identity.RESUMABLE_FIELDS)
    assert len(record["data_digest"]) == 64
    every_field = {field.name for field in dataclasses.fields(RunConfig)}
    assert every_field == (set(settings) - {"teacher_identity"}) | set(identity.RESUMABLE_FIELDS)


@pytest.mark.parametrize("change", [{"method": "soft_logits"}, {"batch_size": 32},
                                    {"image_size": 16}, {"learning_rate": 0.5},
                                    {"method_options": {"clip_scale": 2.0}}])
def test_a_resume_with_other_settings_is_refused_before_any_work(finished_run, tmp_path,
                                                                change):
    train_dir = _unfinished_copy(finished_run, tmp_path)
    before = sorted(os.listdir(train_dir))
    name = next(iter(change))
    with pytest.raises(UserError, match=f"holds a run of other settings: {name} .*"
                                        "choose another --train_dir, or pass --overwrite"):
        train(RunConfig(train_dir=train_dir, **{**ALONE, **change}))
    assert sorted(os.listdir(train_dir)) == before


def test_settings_that_may_change_on_resume_are_accepted(finished_run, tmp_path):
    """Verbosity, determinism, the skip limit: a resumed run of the same identity goes on."""
    train_dir = _unfinished_copy(finished_run, tmp_path)
    results = train(RunConfig(train_dir=train_dir, deterministic=True, max_consecutive_skips=3,
                              **ALONE))
    assert results["val_accuracy"] == finished_run[1]["val_accuracy"]


def test_a_restart_from_scratch_starts_a_fresh_history(finished_run, tmp_path):
    """checkpoints/ removed (the README's advice for a damaged one): the run trains again
    from epoch 0 and reports its 2 epochs, not 4."""
    train_dir = _unfinished_copy(finished_run, tmp_path)
    shutil.rmtree(os.path.join(train_dir, "checkpoints"))
    results = train(RunConfig(train_dir=train_dir, **ALONE))
    assert len(results["val_accuracy"]) == 2
    assert [row["epoch"] for row in run_callbacks.read_history(train_dir)] == ["0", "1"]
    assert results["val_accuracy"] == finished_run[1]["val_accuracy"]


@pytest.mark.parametrize("damage", ["truncated", "deleted", "tampered"])
def test_history_csv_is_a_view_of_the_checkpoint(finished_run, tmp_path, damage):
    train_dir = _unfinished_copy(finished_run, tmp_path)
    path = os.path.join(train_dir, "history.csv")
    text = open(path).read()
    if damage == "truncated":
        open(path, "w").write(text[:len(text) - 40])
    elif damage == "deleted":
        os.remove(path)
    else:
        open(path, "w").write(text + text.splitlines()[1] + "\n")
    results = train(RunConfig(train_dir=train_dir, **ALONE))
    assert results["val_accuracy"] == finished_run[1]["val_accuracy"]
    assert _history(train_dir) == _history(finished_run[0])


def test_an_unparsable_checkpoint_state_is_one_line_and_nothing_is_lost(finished_run, tmp_path):
    train_dir = _unfinished_copy(finished_run, tmp_path)
    state = os.path.join(train_dir, "checkpoints", "checkpoint")
    open(state, "w").write("garbage that is no checkpoint state\n")
    kept = sorted(os.listdir(os.path.join(train_dir, "checkpoints")))
    with pytest.raises(UserError, match="checkpoint cannot be parsed as a checkpoint state") as raised:
        train(RunConfig(train_dir=train_dir, **ALONE))
    assert "\n" not in str(raised.value)
    assert sorted(os.listdir(os.path.join(train_dir, "checkpoints"))) == kept


def test_a_history_short_of_the_run_writes_no_results(finished_run, tmp_path):
    """A run whose checkpointed history lost epochs (its checkpoints replaced during the
    run) reports nothing rather than a short list."""
    from sskd_tf.training import run
    with pytest.raises(UserError, match=r"history holds epochs \[0\], not 0-1.*not written"):
        run._results(RunConfig(train_dir="somewhere", **ALONE).resolved(),
                     [{"epoch": 0, "val_accuracy": 0.5}], 1.0, None, 2)


def test_a_run_without_a_record_is_refused(finished_run, tmp_path):
    train_dir = _unfinished_copy(finished_run, tmp_path)
    os.remove(os.path.join(train_dir, "run.json"))
    with pytest.raises(UserError, match="holds a run without its run.json"):
        train(RunConfig(train_dir=train_dir, **ALONE))


KILL_AFTER_SAVE = textwrap.dedent("""
    import os, signal, sys
    from sskd_tf.training import callbacks
    from sskd_tf.training.config import RunConfig
    from sskd_tf.training.run import train

    # Killed right after the first epoch's checkpoint, before history.csv is written.
    def killed(train_dir, rows):
        if rows:
            os.kill(os.getpid(), signal.SIGKILL)
    callbacks.write_history_csv = killed
    train(RunConfig(train_dir=sys.argv[1], **%r))
""") % ALONE


def test_a_kill_between_the_checkpoint_and_the_csv_loses_nothing(finished_run, tmp_path):
    train_dir = str(tmp_path / "killed")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, train_dir], cwd=REPO,
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert run_callbacks.saved_progress(train_dir) == (1, 2)
    assert not os.path.exists(os.path.join(train_dir, "history.csv"))
    results = train(RunConfig(train_dir=train_dir, **ALONE))
    assert results["val_accuracy"] == finished_run[1]["val_accuracy"]
    _assert_same_history(train_dir, finished_run[0])


HOLD_THE_RUN = textwrap.dedent("""
    import sys, time
    import main
    from absl import app
    from sskd_tf.training import callbacks

    # Each step a little slower, so that the test can signal it mid-run.
    slow = callbacks.NonFiniteGuard.on_train_batch_end
    def slower(self, batch, logs=None):
        time.sleep(0.5)
        slow(self, batch, logs)
    callbacks.NonFiniteGuard.on_train_batch_end = slower
    sys.argv[0] = "main.py"
    app.run(main.main, flags_parser=main.parse_flags)
""")
RUN_ARGS = ["--method=none", "--teacher=resnet8", "--dataset=digits", "--image_size=8",
            "--take_train=256", "--take_test=32", "--batch_size=32", "--epochs=2", "--seed=4"]


def test_one_process_at_a_time_and_sigterm_or_sigint_checkpoints_then_exits(tmp_path):
    """A second command on a directory in use is refused at once, naming the holder; SIGTERM
    stops the holder after a checkpoint, with status 143; resumed, Ctrl-C (SIGINT) stops it
    after a later checkpoint, with 130."""
    train_dir = str(tmp_path / "run")
    command = [sys.executable, "-c", HOLD_THE_RUN, *RUN_ARGS, f"--train_dir={train_dir}"]
    holder = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        logs = os.path.join(train_dir, "logs", "train")
        deadline = time.time() + 300
        while not os.path.isdir(logs):
            assert holder.poll() is None, holder.stderr.read()[-2000:]
            assert time.time() < deadline, "the run did not start training"
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "main.py", *RUN_ARGS, f"--train_dir={train_dir}"],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        errors = [line for line in second.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
        assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
        assert errors[0] == (f"{ERROR_PREFIX} {train_dir} is in use by another run (pid "
                             f"{holder.pid}); wait for it to end, or choose another --train_dir")
        holder.send_signal(signal.SIGTERM)
        _, stderr = holder.communicate(timeout=300)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == 143, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and errors[0].startswith(f"{ERROR_PREFIX} interrupted by SIGTERM "
                                                     "(checkpoint saved at step ")
    assert "Traceback" not in stderr
    epochs, step = run_callbacks.saved_progress(train_dir)
    assert step > 0 and not os.path.exists(os.path.join(train_dir, "results.json"))
    # Resumed, then stopped by Ctrl-C once it trains again: status 130, a later step saved.
    interrupted = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    try:
        for line in interrupted.stdout:
            if line.startswith("Resuming"):
                break
        time.sleep(1.5)
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=300)
    finally:
        if interrupted.poll() is None:
            interrupted.kill()
            interrupted.wait()
    assert interrupted.returncode == 130, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)][0].startswith(
        f"{ERROR_PREFIX} interrupted by SIGINT (checkpoint saved at step ")
    assert run_callbacks.saved_progress(train_dir)[1] > step
    # Resuming to the end after a signal: test_a_signal_near_an_epochs_end_... (in process).


@pytest.mark.parametrize("signalled_step", ["last_of_epoch_1", "first_of_epoch_2"])
def test_a_signal_near_an_epochs_end_keeps_every_finished_epochs_row(tmp_path, monkeypatch,
                                                                   signalled_step):
    """A signal on an epoch's last step stops the run once that epoch is validated and
    recorded (its checkpoint holds the row); one on the next step stops it at once. The same
    command then resumes to a history of every epoch."""
    config = RunConfig(train_dir=str(tmp_path), **ALONE)
    # 2 epochs of 128 examples in batches of 64: the first epoch ends at step ceil(128 / 64).
    at_step = {"last_of_epoch_1": 2, "first_of_epoch_2": 3}
    real_batch_end = run_callbacks.RunCheckpoint.on_train_batch_end

    def signalled(self, batch, logs=None):
        if int(self.model_step()) == at_step[signalled_step]:
            self._on_signal(signal.SIGINT, None)
        real_batch_end(self, batch, logs)

    monkeypatch.setattr(run_callbacks.RunCheckpoint, "on_train_batch_end", signalled)
    with pytest.raises(Interrupted, match=r"checkpoint saved at step \d+ of epoch \d+"):
        train(config)
    assert run_callbacks.saved_progress(str(tmp_path)) == (1, at_step[signalled_step])
    assert [int(row["epoch"]) for row in run_callbacks.read_history(str(tmp_path))] == [0]
    monkeypatch.undo()
    assert len(train(config)["val_accuracy"]) == 2


def test_a_second_signal_stops_the_run_at_once_without_a_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C twice: the first asks for a checkpoint after the step, the second (before
    that step ends) stops at once, leaving the last checkpoint as it was."""
    config = RunConfig(train_dir=str(tmp_path), **ALONE)
    real_batch_end = run_callbacks.RunCheckpoint.on_train_batch_end

    def twice_at_step_3(self, batch, logs=None):
        if int(self.model_step()) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real_batch_end(self, batch, logs)

    monkeypatch.setattr(run_callbacks.RunCheckpoint, "on_train_batch_end", twice_at_step_3)
    with pytest.raises(Interrupted) as interrupted:
        train(config)
    assert interrupted.value.signum == signal.SIGINT
    assert run_callbacks.saved_progress(str(tmp_path)) == (1, 2)  # epoch 1's end, not step 3


def test_the_lock_is_the_operating_systems(tmp_path):
    """Held, a second taker is refused with the holder's pid (an open file description of
    its own takes flock's lock as another process would); released, the next one takes it;
    the lock file stays. (A process that dies releases it: the SIGTERM test resumes after
    one.)"""
    with files.run_lock(str(tmp_path)):
        with pytest.raises(UserError, match=f"{tmp_path} is in use by another run \\(pid "
                                            f"{os.getpid()}\\); wait for it to end"):
            with files.run_lock(str(tmp_path)):
                pass
    with files.run_lock(str(tmp_path)):
        pass
    assert os.listdir(tmp_path) == [".lock"]


def _teacher_copy(teacher_run, tmp_path):
    train_dir = tmp_path / "distil"
    shutil.copytree(teacher_run, train_dir / "teacher")
    return str(train_dir)


@pytest.mark.parametrize("change", [{"take_train": 96}, {"batch_size": 32}, {"seed": 1},
                                    {"learning_rate": 0.01}, {"keras_batch_norm": True},
                                    {"teacher_taps": ("stage0_block0_relu1",)}])
def test_a_cached_teacher_of_other_settings_is_refused(teacher_run, tmp_path, change):
    train_dir = _teacher_copy(teacher_run, tmp_path)
    # The teacher's own run trains the teacher as its student: its taps are student_taps.
    name = {"teacher_taps": "student_taps"}.get(next(iter(change)), next(iter(change)))
    config = RunConfig(train_dir=train_dir, **{**TINY, "method": "soft_logits", **change})
    with pytest.raises(UserError, match=f"teacher holds a teacher of other settings: {name} "):
        train(config)
    assert sorted(os.listdir(train_dir)) == [".lock", "teacher"]


def test_overwrite_starts_over_keeping_a_teacher_of_the_same_settings(teacher_run, tmp_path):
    """--overwrite on a finished run of the same settings keeps its cached teacher and
    trains the run again; on one of other settings (another seed), the teacher, of other
    settings too, is trained again."""
    train_dir = _teacher_copy(teacher_run, tmp_path)
    teacher_file = os.path.join(train_dir, "teacher", "student.keras")
    kept = os.path.getmtime(teacher_file)
    config = RunConfig(train_dir=train_dir, overwrite=True, **{**TINY, "method": "soft_logits"})
    open(os.path.join(train_dir, "results.json"), "w").write("{}")  # a finished run's
    train(config)
    assert os.path.getmtime(teacher_file) == kept
    train(dataclasses.replace(config, seed=1))
    for directory in (train_dir, os.path.join(train_dir, "teacher")):
        with open(os.path.join(directory, "run.json")) as handle:
            assert json.load(handle)["identity"]["seed"] == 1, directory
    assert len(run_callbacks.read_history(train_dir)) == 1


def test_the_default_train_dir_is_derived_from_the_settings():
    """The same settings always name the same directory (so the same command resumes), other
    settings another; where and how the run works (verbosity, data_dir) do not count."""
    base = RunConfig(**ALONE).resolved()
    directory = with_train_dir(base).train_dir
    assert directory.startswith(os.path.join("runs", "none-resnet8-digits-"))
    assert with_train_dir(dataclasses.replace(base, verbose=1, data_dir="/elsewhere")).train_dir \
        == directory
    assert with_train_dir(dataclasses.replace(base, batch_size=32)).train_dir != directory
    assert with_train_dir(dataclasses.replace(base, train_dir="mine")).train_dir == "mine"


def test_a_resume_on_other_data_is_refused(tmp_path, monkeypatch):
    """--data_dir may move between a run and its resumption, not the data: a resumed run
    checks the digest of what it reads against the one it started on."""
    first, other, moved = (str(tmp_path / name) for name in ("first", "other", "moved"))
    _fake_cifar10(first, as_archive=False, seed=0)
    _fake_cifar10(other, as_archive=False, seed=1)
    shutil.copytree(first, moved)
    config = RunConfig(method="none", teacher="resnet8", dataset="cifar10", data_dir=first,
                       image_size=8, batch_size=4, epochs=2, verbose=0,
                       train_dir=str(tmp_path / "run"))
    standard = run_callbacks.standard_callbacks

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    monkeypatch.setattr(run_callbacks, "standard_callbacks", lambda *a: standard(*a) + [Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config)
    monkeypatch.setattr(run_callbacks, "standard_callbacks", standard)
    with pytest.raises(UserError, match="holds a run trained on other data"):
        train(dataclasses.replace(config, data_dir=other))
    assert len(train(dataclasses.replace(config, data_dir=moved))["val_accuracy"]) == 2


def test_the_checkpoint_holds_the_methods_own_layers(tmp_path):
    """FitNet's regressors, KD-SVD's projections and self-distillation's heads live in
    Python lists of the method: a run's checkpoint holds their weights all the same, the
    batch-norm moving statistics among them (which the optimizer does not hold), and a
    restore puts them back."""
    from sskd_tf.distill import build_method
    from sskd_tf.training.distiller import Distiller
    from sskd_tf.training.schedule import EpochCut
    from test_method_runs import _toy

    def distiller(method_name, options, seed):
        keras.utils.set_random_seed(seed)
        student, teacher = _toy(seed), _toy(seed + 1, widths=(6, 12, 12))
        method = build_method(method_name, **options)
        made = Distiller(teacher if method.needs_teacher else None, student, loss_of(method),
                         steps_in_epoch=1)
        made.build((None, 8, 8, 3))
        made.compile(optimizer=keras.optimizers.SGD(0.1))
        made.optimizer.build(made.trainable_variables)
        return made

    for name, options in (("fitnet", {}), ("svd", {"project_student": True}),
                          ("self_distill", {})):
        saved = distiller(name, options, seed=1)
        assert saved.method.weights, name
        for weight in saved.method.weights:
            weight.assign(np.random.default_rng(0).uniform(0.5, 1.5, weight.shape))
        directory = str(tmp_path / name)
        run_callbacks.RunCheckpoint(directory, saved, EpochCut.of_steps(1), 1).manager.save()
        restored = distiller(name, options, seed=7)
        assert any(not np.array_equal(a.numpy(), b.numpy())
                   for a, b in zip(saved.method.weights, restored.method.weights)), name
        run_callbacks.RunCheckpoint(directory, restored, EpochCut.of_steps(1), 1).restore()
        for a, b in zip(saved.method.weights, restored.method.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
