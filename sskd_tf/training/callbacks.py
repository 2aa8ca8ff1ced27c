"""Keras callbacks of a run: checkpoints that a killed run resumes from, the
per-epoch history and TensorBoard."""
import csv
import os

import keras
import tensorflow as tf

HISTORY_FILE = "history.csv"


class RunCheckpoint(keras.callbacks.Callback):
    """Saves student, method layers, optimizer (with its step count) and the
    number of finished epochs at every epoch end, with tf.train.CheckpointManager."""

    def __init__(self, train_dir, distiller, max_to_keep=2):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            student=distiller.student, method=distiller.method, optimizer=distiller.optimizer,
            epoch=self.epoch, wall_time=self.wall_time)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(train_dir, "checkpoints"), max_to_keep=max_to_keep)
        self._restored_wall_time = 0.0
        self._epoch_started = None

    def restore(self):
        """Restore the latest checkpoint, if any; return the number of finished epochs."""
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self._restored_wall_time = float(self.wall_time.numpy())
        return int(self.epoch.numpy())

    def previous_wall_time(self):
        """Training time spent before this process resumed the run."""
        return self._restored_wall_time

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = tf.timestamp()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.wall_time.assign_add(float(tf.timestamp() - self._epoch_started))
        self.manager.save(checkpoint_number=epoch + 1)


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
            tf.summary.text("run_settings", "\n".join(rows), step=0)
        writer.close()


def standard_callbacks(config, checkpoint):
    """The callbacks of every run, checkpoint first so that a crash in a later one
    loses nothing."""
    log_dir = os.path.join(config.train_dir, "logs")
    callbacks = [
        checkpoint,
        keras.callbacks.CSVLogger(os.path.join(config.train_dir, HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(log_dir=log_dir),
        FlagsSummary(log_dir, {k: v for k, v in vars(config).items() if k != "verbose"}),
    ]
    return callbacks


def read_history(train_dir):
    """The rows of history.csv (one per finished epoch, across resumes)."""
    path = os.path.join(train_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
