"""Keras callbacks of a run: checkpoints that a killed or interrupted run resumes from
(with the run's history in them), the guard against non-finite steps, TensorBoard, and the
callback list that carries them through a run trained one fit call per epoch."""
import contextlib
import csv
import io
import json
import os
import signal
import threading
import time

import keras
import tensorflow as tf
from absl import logging

from sskd_tf.errors import Interrupted, TrainingDiverged, UserError
from sskd_tf.training import files

HISTORY_FILE = "history.csv"
SETTINGS_TAG = "run_settings"
CHECKPOINT_DIR = "checkpoints"
INTERRUPTING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _unreadable(path, error):
    return UserError(
        f"cannot resume from {path} ({type(error).__name__}: {str(error).splitlines()[0]}); "
        "delete its checkpoints/ or pass --overwrite")


def check_checkpoint_dir(directory):
    """Refuse (UserError) a checkpoint directory whose state file cannot be parsed:
    TensorFlow would ignore it, start afresh and overwrite the checkpoints it lists. (Without
    a state file nothing was recorded: a run killed inside its first save starts afresh.)"""
    state = os.path.join(directory, "checkpoint")
    if os.path.exists(state) and tf.train.get_checkpoint_state(directory) is None:
        raise UserError(f"{state} cannot be parsed as a checkpoint state; restore it, "
                        "delete the directory to start over, or pass --overwrite")


def saved_progress(train_dir):
    """(finished epochs, global step) of the latest checkpoint in train_dir, read without
    building the run; (0, 0) when there is none."""
    latest = tf.train.latest_checkpoint(os.path.join(train_dir, CHECKPOINT_DIR))
    if not latest:
        return 0, 0
    try:
        reader = tf.train.load_checkpoint(latest)
        step = next(name for name in reader.get_variable_to_shape_map()
                    if name.startswith("optimizer/") and "iteration" in name)
        return (int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")),
                int(reader.get_tensor(step)))
    except (tf.errors.OpError, ValueError, StopIteration) as error:
        raise _unreadable(latest, error) from None


def random_states(model):
    """The states of the model's random-number generators (keras SeedGenerators, e.g. of
    Dropout): the variables that Keras lists in `variables` beside the `weights`."""
    weights = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def trained_networks(student, method, teacher=None):
    """What a run's checkpoint holds of its networks, as tf.train.Checkpoint children: the
    student (a Keras model, followed layer by layer), the method's weights by position
    (its own layers, e.g. FitNet's regressors, live in Python lists, which TensorFlow's
    checkpoints do not follow) and the teacher when the run trains it."""
    networks = {"student": student, "method_weights": list(method.weights)}
    if teacher is not None:
        networks["teacher"] = teacher
    return networks


def _history_rows(text):
    return json.loads(text.decode() if isinstance(text, bytes) else text)


def write_history_csv(train_dir, rows):
    """history.csv: one row per finished epoch, a view of the checkpointed history
    (rewritten whole and atomically, never appended); removed when there is none."""
    path = os.path.join(train_dir, HISTORY_FILE)
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return
    columns = ["epoch"] + sorted({name for row in rows for name in row} - {"epoch"})
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, text.getvalue())


class RunCheckpoint(keras.callbacks.Callback):
    """Saves, with tf.train.CheckpointManager, what a run resumes from: the student, the
    method's layers, the teacher when a stage trains it, the optimizer (with its step count),
    the random-generator states of the networks it trains, the finished epochs, the run's
    history (every finished epoch's logs: results.json and history.csv are built from it)
    and the metric states of an unfinished epoch. All in one atomic save, at every epoch end, and after the current step
    when SIGINT or SIGTERM arrives (then it raises `Interrupted`; a second signal interrupts
    at once; see `signals_handled`). Together with the data stream, keyed by the global
    step, a run resumed from any of these checkpoints replays the uninterrupted one, its
    history and epoch averages included.

    cut, epochs: the run's EpochCut and its number of epochs (for the steps of each epoch).
    """

    def __init__(self, train_dir, distiller, cut, epochs, max_to_keep=2):
        super().__init__()
        self.train_dir = train_dir
        self.cut, self.epochs = cut, epochs
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False)
        self.wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.metric_states = [variable for metric in distiller.metrics
                              for variable in metric.variables]
        trained_teacher = distiller.teacher if distiller.stage_plan.trains("teacher") else None
        self.checkpoint = tf.train.Checkpoint(
            **trained_networks(distiller.student, distiller.method, trained_teacher),
            optimizer=distiller.optimizer,
            random_states=random_states(distiller.student) + random_states(distiller.method) + (
                [] if trained_teacher is None else random_states(trained_teacher)),
            epoch=self.epoch, history=self.history, wall_time=self.wall_time,
            metric_states=self.metric_states)
        directory = os.path.join(train_dir, CHECKPOINT_DIR)
        check_checkpoint_dir(directory)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                                  max_to_keep=max_to_keep)
        self._signal = None
        self._started = None
        self._epoch_metrics_from = None

    @property
    def rows(self):
        """The history: one dict of logs per finished epoch."""
        return _history_rows(self.history.numpy())

    def restore(self):
        """Restore the latest checkpoint, if any, and rewrite history.csv from it (a fresh
        run removes a stale one): (finished epochs, training seconds spent before)."""
        latest = self.manager.latest_checkpoint
        if latest:
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError, IndexError) as error:
                raise _unreadable(latest, error) from None
            step = int(self.model_step())
            if step > self.cut.first_step(int(self.epoch.numpy())):
                self._epoch_metrics_from = latest
        write_history_csv(self.train_dir, self.rows)
        return int(self.epoch.numpy()), float(self.wall_time.numpy())

    def model_step(self):
        """The global step: the optimizer's step count."""
        return self.checkpoint.optimizer.iterations.numpy()

    @contextlib.contextmanager
    def signals_handled(self):
        """While the block runs (in the main thread), SIGINT and SIGTERM stop training
        after the current step, once its checkpoint is saved; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in INTERRUPTING_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame):
        if self._signal is not None:
            raise Interrupted(signum=signum)
        self._signal = signum

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()
        if self._epoch_metrics_from:
            # Keras has just reset the metrics: the interrupted epoch's averages go on.
            tf.train.Checkpoint(metric_states=self.metric_states).restore(
                self._epoch_metrics_from).expect_partial()
            self._epoch_metrics_from = None

    def _save(self):
        now = time.monotonic()
        self.wall_time.assign_add(now - self._started)
        self._started = now
        with files.writing("a checkpoint", self.manager.directory):
            self.manager.save()

    def _interrupt(self, epoch):
        step = int(self.model_step()) - self.cut.first_step(epoch)
        raise Interrupted(f"checkpoint saved at step {step} of epoch {epoch + 1}",
                          signum=self._signal)

    def on_train_batch_end(self, batch, logs=None):
        epoch = int(self.epoch.numpy())
        # A signal on an epoch's last step waits for its end (validation, history row): a
        # checkpoint at the next epoch's first step must hold the finished epoch's row.
        if self._signal is not None and self.model_step() < self.cut.last_step(epoch, self.epochs):
            self._save()
            self._interrupt(epoch)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, "steps": self.cut.steps_in(epoch, self.epochs)}
        row.update({name: float(value) for name, value in (logs or {}).items()})
        rows = self.rows + [row]
        self.history.assign(json.dumps(rows))
        self.epoch.assign(epoch + 1)
        self._save()
        write_history_csv(self.train_dir, rows)
        if self._signal is not None:
            self._interrupt(epoch)


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


def standard_callbacks(config, checkpoint):
    """The callbacks of every run, in order: the guard (which stops a diverged run before its
    epoch is checkpointed), the timer (whose column the history records), the checkpoint,
    then the loggers."""
    log_dir = os.path.join(config.train_dir, "logs")
    return [
        NonFiniteGuard(config.max_consecutive_skips),
        EpochTimer(),
        checkpoint,
        keras.callbacks.TensorBoard(log_dir=log_dir),
        FlagsSummary(log_dir, {k: v for k, v in vars(config).items() if k != "verbose"}),
    ]


class EpochByEpoch(keras.callbacks.CallbackList):
    """The callback list of a run that calls `fit` once per epoch (training/loop.py): its
    callbacks see one training, begun by `begin()` and ended by `end()`, not one per fit
    call; its History holds every epoch; `set_steps` tells the progress bar the length of
    the next epoch."""

    def on_train_begin(self, logs=None):
        """Called by each fit; the run's training begins once, at `begin`."""

    def on_train_end(self, logs=None):
        """Called by each fit; the run's training ends once, at `end`."""

    def begin(self):
        super().on_train_begin()

    def end(self, logs=None):
        super().on_train_end(logs)

    def set_steps(self, steps):
        self.set_params({**self.params, "steps": steps})


def read_history(train_dir):
    """The rows of history.csv (one per finished epoch)."""
    path = os.path.join(train_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
