"""Keras callbacks of a run: checkpoints that a killed or interrupted run resumes
from, the guard against non-finite steps, the per-epoch history and TensorBoard."""
import ast
import csv
import glob
import os
import signal
import threading
import time

import keras
import tensorflow as tf
from absl import logging

from sskd_tf.errors import TrainingDiverged, UserError
from sskd_tf.training import files

HISTORY_FILE = "history.csv"
SETTINGS_TAG = "run_settings"
CHECKPOINT_DIR = "checkpoints"


def _unreadable(path, error):
    return UserError(
        f"cannot resume from {path} ({type(error).__name__}: {str(error).splitlines()[0]}); "
        "delete its checkpoints/ or pass --overwrite")


def saved_progress(train_dir):
    """(finished epochs, steps done in the next) of the latest checkpoint in train_dir,
    read without building the run; (0, 0) when there is none."""
    latest = tf.train.latest_checkpoint(os.path.join(train_dir, CHECKPOINT_DIR))
    if not latest:
        return 0, 0
    try:
        reader = tf.train.load_checkpoint(latest)
        return tuple(int(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
                     for name in ("epoch", "epoch_steps"))
    except (tf.errors.OpError, ValueError) as error:
        raise _unreadable(latest, error) from None


def random_states(model):
    """The states of the model's random-number generators (keras SeedGenerators, e.g. of
    Dropout): the variables that Keras lists in `variables` beside the `weights`."""
    weights = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


class RunCheckpoint(keras.callbacks.Callback):
    """Saves student, method layers, optimizer (with its step count), the student's and
    method's random-generator states, the finished epochs and the steps done in an
    unfinished one, with tf.train.CheckpointManager: at every epoch end, and after the
    current step when SIGINT arrives (then it raises KeyboardInterrupt). A second SIGINT
    interrupts at once. Together with the data stream, keyed by (seed, pass, step), a run
    resumed from any of these checkpoints replays the uninterrupted one."""

    def __init__(self, train_dir, distiller, max_to_keep=2):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            student=distiller.student, method=distiller.method, optimizer=distiller.optimizer,
            random_states=random_states(distiller.student) + random_states(distiller.method),
            epoch=self.epoch, epoch_steps=self.epoch_steps, wall_time=self.wall_time)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(train_dir, CHECKPOINT_DIR), max_to_keep=max_to_keep)
        self.step_offset = 0
        self._steps = 0
        self._interrupted = False
        self._previous_handler = None
        self._started = None

    def restore(self):
        """Restore the latest checkpoint, if any: (finished epochs, steps done in the
        next one, training seconds spent before)."""
        if not self.manager.latest_checkpoint:
            return 0, 0, 0.0
        try:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError) as error:
            raise _unreadable(self.manager.latest_checkpoint, error) from None
        return int(self.epoch.numpy()), int(self.epoch_steps.numpy()), float(self.wall_time.numpy())

    def _on_sigint(self, signum, frame):
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True

    def on_train_begin(self, logs=None):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_end(self, logs=None):
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()
        self._steps = self.step_offset

    def _save(self):
        now = time.monotonic()
        self.wall_time.assign_add(now - self._started)
        self._started = now
        with files.writing("a checkpoint", self.manager.directory):
            self.manager.save()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._interrupted:
            self.epoch_steps.assign(self._steps)
            self._save()
            self.on_train_end()
            raise KeyboardInterrupt(f"checkpoint saved at step {self._steps} of epoch {int(self.epoch.numpy()) + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.epoch_steps.assign(0)
        self.step_offset = 0
        self._save()


class NonFiniteGuard(keras.callbacks.Callback):
    """Logs every skipped (non-finite) step and stops the run after
    `max_consecutive` in a row, before the epoch's checkpoint can be written."""

    def __init__(self, max_consecutive):
        super().__init__()
        self.max_consecutive = max_consecutive
        self._reported = 0

    def on_train_batch_end(self, batch, logs=None):
        skips = int(keras.ops.convert_to_numpy(self.model.consecutive_skips))
        if skips > self._reported:
            logging.warning("step %d skipped: non-finite loss or gradient (%d in a row)", batch, skips)
        self._reported = skips
        if skips >= self.max_consecutive:
            raise TrainingDiverged(
                f"{skips} consecutive steps had a non-finite loss or gradient; training stopped and "
                "the last checkpoint is intact (lower --learning_rate, or check the data)")


class EpochTimer(keras.callbacks.Callback):
    """Adds `train_time_s`, the epoch's training time without validation, to the
    epoch logs (and so to history.csv and TensorBoard)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._train_time = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._train_time is None:
            self._train_time = time.perf_counter() - self._started

    def on_epoch_end(self, epoch, logs=None):
        logs["train_time_s"] = self._train_time or time.perf_counter() - self._started


class FlagsSummary(keras.callbacks.Callback):
    """Writes the run's settings as a text summary next to the TensorBoard curves."""

    def __init__(self, log_dir, settings):
        super().__init__()
        self.log_dir = log_dir
        self.settings = settings

    def on_train_begin(self, logs=None):
        rows = ["| setting | value |", "|---|---|"]
        rows += [f"| {name} | {value} |" for name, value in sorted(self.settings.items())]
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            tf.summary.text(SETTINGS_TAG, "\n".join(rows), step=0)
        writer.close()


def read_settings(train_dir):
    """The settings FlagsSummary wrote in train_dir/logs (the latest, after a resume), as
    {name: value}: Python literals parsed, anything else (paths, names) kept as a string;
    None when the logs hold none."""
    settings = None
    for path in sorted(glob.glob(os.path.join(train_dir, "logs", "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
                if value.tag == SETTINGS_TAG:
                    settings = _parse_settings(tf.make_ndarray(value.tensor).item().decode())
    return settings


def _parse_settings(table):
    settings = {}
    for row in table.splitlines()[2:]:
        name, value = (cell.strip() for cell in row.strip().strip("|").split("|", 1))
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[name] = value
    return settings


def standard_callbacks(config, checkpoint):
    """The callbacks of every run, checkpoint first so that a crash in a later one
    loses nothing, and the timer before the loggers that record its column."""
    log_dir = os.path.join(config.train_dir, "logs")
    return [
        checkpoint,
        NonFiniteGuard(config.max_consecutive_skips),
        EpochTimer(),
        keras.callbacks.CSVLogger(os.path.join(config.train_dir, HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(log_dir=log_dir),
        FlagsSummary(log_dir, {k: v for k, v in vars(config).items() if k != "verbose"}),
    ]


def read_history(train_dir):
    """The rows of history.csv (one per finished epoch, across resumes)."""
    path = os.path.join(train_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
