"""Hyperparameter search over a distillation method's options with keras-tuner.

The teacher is trained (by the recipe, cached in train_dir/teacher/) or loaded
once and shared by every trial. A trial builds a fresh student and the method
from `METHODS.get(name).search_space(hp)` merged with the fixed options,
compiles the Distiller as a training run does and trains it as a run does
(training/loop.py): the first `epochs` epochs (after the method's stages before its main one) of
the full run, on the full run's epochs and learning-rate schedule. The objective is
the best `val_accuracy`.

With the same seed, a search proposes the same trials in the same order with every
tuner (keras-tuner is given --seed + 1: it takes 0 for "no seed"; the Bayesian
tuner's optimiser starts from points keyed by the trial's number), and every trial
starts from the same seed on the same stream, so that a resumed search replays what
an uninterrupted one would (with --deterministic, score for score).

Layout of train_dir/tune/ (keras-tuner's project directory; a re-run resumes it):
  oracle.json, trial_*/   the tuner's state and each trial's best weights
  run.json                the identity of the search (training/identity.py), checked on resume
  trials.md, trials.csv   every trial, best first (written atomically)
  best.flags              the best trial as a flagfile of `main.py` (sskd_tf/modes/tune.py)
  hparams/                TensorBoard HParams logs: the experiment, one run per trial
"""
import csv
import dataclasses
import glob
import io
import math
import os
import shutil

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from keras_tuner.engine import hyperparameters as hp_types
from tensorboard.plugins.hparams import api as hparams_api

from sskd_tf.distill import METHODS, build_method
from sskd_tf.errors import SearchFailed, UserError
from sskd_tf.training import files, identity
from sskd_tf.training.callbacks import NonFiniteGuard
from sskd_tf.training.loop import fit_epochs
from sskd_tf.training.run import (build_distiller, build_student, epoch_cut,
                                  needs_trained_teacher, run_data, teacher_identity,
                                  teacher_weights_path)
from sskd_tf.training.strategy import make_strategy
from sskd_tf.training.teacher import fresh_teacher, run_teacher


def _retried_from_scratch(tuner_class):
    """`tuner_class` whose trials begin without the metrics of an earlier attempt.

    keras-tuner runs a trial that a killed search left RUNNING again, with the same
    hyperparameters, but a kill after the trial reported its metrics and before it
    ended keeps that report, and the rerun's score would be the mean of both attempts."""
    class RetriedFromScratch(tuner_class):
        def on_trial_begin(self, trial):
            trial.metrics.metrics.clear()
            super().on_trial_begin(trial)

    RetriedFromScratch.__name__ = tuner_class.__name__
    return RetriedFromScratch


class ReplayingBayesianOracle(kt.oracles.BayesianOptimizationOracle):
    """keras-tuner's Bayesian oracle, made to propose after a resume what it would have
    proposed running on: its Gaussian process is fitted to the trials in the order of their
    ids (a reloaded oracle holds them in the order of its files), and its optimiser starts
    from points drawn by a generator keyed by (seed, number of trials so far) instead of
    one generator for the whole search, which a resumed search would restart."""

    def populate_space(self, trial_id):
        self.trials = dict(sorted(self.trials.items()))
        self._random_state = np.random.RandomState([self.seed, len(self.trials)])
        return super().populate_space(trial_id)


def _bayesian(hypermodel, max_trials, **common):
    oracle_options = {name: common.pop(name) for name in (
        "objective", "hyperparameters", "seed", "max_consecutive_failed_trials")}
    oracle = ReplayingBayesianOracle(max_trials=max_trials, **oracle_options)
    return _retried_from_scratch(kt.Tuner)(oracle, hypermodel, **common)


TUNERS = {"random": _retried_from_scratch(kt.RandomSearch), "bayesian": _bayesian,
          "hyperband": _retried_from_scratch(kt.Hyperband)}
OBJECTIVE = "val_accuracy"
RESULT_COLUMNS = ("trial", "status", OBJECTIVE, "best_epoch")
TUNE_DIR = "tune"


def search_space(config):
    """The HyperParameters of `config.method`: its `search_space(hp)`, with the
    options fixed in `config.method_options` registered as hp.Fixed."""
    method_class = METHODS.get(config.method)
    declared = kt.HyperParameters()
    method_class.search_space(declared)
    hp = kt.HyperParameters()
    for name in declared.values:
        if name in config.method_options:
            hp.Fixed(name, config.method_options[name])
    method_class.search_space(hp)
    return hp


def tuned_names(hp):
    """Names of the hyperparameters that are searched (not fixed)."""
    return [item.name for item in hp.space if not isinstance(item, hp_types.Fixed)]


class DistillerHyperModel(kt.HyperModel):
    """Builds and compiles the Distiller of one trial; every trial starts from the
    same seed on the same data stream, so that trials differ only by their
    hyperparameters and a resumed search replays what an uninterrupted one would."""

    def __init__(self, config, teacher, data):
        super().__init__(name=f"{config.method}_distiller")
        self.config = config
        self.teacher = teacher
        self.data = data
        self.cut = epoch_cut(config, data.info)

    def _stream(self, start_step, inputs=()):
        return self.data.training(start_step, self.cut.full_batches, inputs)

    def build(self, hp):
        keras.utils.set_random_seed(self.config.seed)
        options = {**self.config.method_options,
                   **METHODS.get(self.config.method).search_space(hp)}
        method = build_method(self.config.method, **options)
        student = build_student(self.config, self.data.info)
        teacher = self.teacher
        if teacher is not None and not method.pretrained_teacher:  # each trial trains its own
            teacher = fresh_teacher(self.config, self.data.info.num_classes,
                                    self.data.info.image_shape)
        method.prepare(teacher, self._stream(0, method.batch_inputs())
                       .take(self.cut.first_step(1)))
        return build_distiller(self.config, method, teacher, student, self.cut)

    def fit(self, hp, model, epochs=1, initial_epoch=0, callbacks=(), verbose=1, **kwargs):
        """Train the method's stages before its main one and then `epochs` epochs of the
        full run (its StagePlan), as a
        run trains them (training/loop.py); a trial that diverges stops (and fails) as a
        run does. A trial that continues another (Hyperband) starts its step count, and
        so the learning rate, the clipping rule and the data stream, where that one
        stopped. A trial run again after an interruption starts its TensorBoard curves
        over."""
        del kwargs
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.TensorBoard):
                for split in ("train", "validation"):
                    shutil.rmtree(os.path.join(callback.log_dir, split), ignore_errors=True)
        offset = model.stage_plan.offset
        initial_epoch = initial_epoch + offset if initial_epoch else 0
        model.optimizer.iterations.assign(self.cut.first_step(initial_epoch))
        callbacks = list(callbacks) + [NonFiniteGuard(self.config.max_consecutive_skips)]
        inputs = model.method.batch_inputs()
        return fit_epochs(model, lambda step: self._stream(step, inputs), self.cut,
                          self.config.epochs + offset, callbacks,
                          validation_data=self.data.validation, verbose=verbose,
                          stop_epoch=epochs + offset)


def make_tuner(name, hypermodel, hyperparameters, max_trials, epochs, seed, tune_dir, strategy):
    """The keras-tuner tuner `name`, resuming the project in `tune_dir` if any.
    Hyperband's brackets go up to `epochs`; --max_trials caps its trial count.
    Failed trials (a diverged one, say) are recorded and the search goes on.
    keras-tuner gets `seed + 1`, since it draws a random seed for 0."""
    if name not in TUNERS:
        raise UserError(f"unknown tuner {name!r}; choose one of: {', '.join(TUNERS)}")
    common = dict(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=hyperparameters,
                  seed=seed + 1, directory=os.path.dirname(tune_dir),
                  project_name=os.path.basename(tune_dir), distribution_strategy=strategy,
                  max_consecutive_failed_trials=max_trials + 1)
    if name == "hyperband":
        tuner = TUNERS[name](hypermodel, max_epochs=epochs, **common)
        tuner.oracle.max_trials = max_trials
        return tuner
    return TUNERS[name](hypermodel, max_trials=max_trials, **common)


@dataclasses.dataclass
class Search:
    """A finished search: its rows (`trial_rows`), its resolved config (train_dir
    included), its directory, and the teacher weights every trial used (None: none)."""

    rows: list
    config: object
    tune_dir: str
    teacher_weights: str

    @property
    def best(self):
        """The best completed trial's row."""
        return next(row for row in self.rows if row["status"] == "COMPLETED")


def search_identity(config, tuner, epochs):
    """What a search's results depend on: its runs' identity, the tuner and the epochs
    of a trial (more trials may be asked for on resume)."""
    return {"runs": identity.run_identity(config, teacher_identity(config)), "tuner": tuner,
            "tune_epochs": epochs}


def search(config, tuner="random", max_trials=10, epochs=2):
    """Run (or resume) the search, holding train_dir's lock; write the table and the
    HParams logs to train_dir/tune/ and return the `Search`. train_dir None: runs/tune-
    <method>-<student>-<dataset>-<fingerprint of the search's identity>."""
    config = config.resolved()
    hyperparameters = search_space(config)
    if not hyperparameters.space:
        raise UserError(f"--method={config.method} leaves nothing to search: it declares "
                         "no search space")
    if not tuned_names(hyperparameters):
        raise UserError(f"--method={config.method} leaves nothing to search: --method_options "
                         f"fixes all of {', '.join(hyperparameters.values)}")
    if not config.train_dir:
        config = dataclasses.replace(config, train_dir=identity.default_train_dir(
            "tune", (config.method, config.student, config.dataset),
            search_identity(dataclasses.replace(config, train_dir=""), tuner, epochs)))
    with files.run_lock(config.train_dir):
        return _search(config, hyperparameters, tuner, max_trials, epochs)


def _prepare_tune_dir(tune_dir, wanted, overwrite):
    """Start over (overwrite) or check that a search to resume has the same identity."""
    if overwrite and os.path.isdir(tune_dir):
        shutil.rmtree(tune_dir)
    files.ensure_writable_dir(tune_dir)
    if identity.check_identity(tune_dir, wanted, what="search") is None:
        identity.record_identity(tune_dir, wanted)


def _search(config, hyperparameters, tuner, max_trials, epochs):
    tune_dir = os.path.join(config.train_dir, TUNE_DIR)
    _prepare_tune_dir(tune_dir, search_identity(config, tuner, epochs), config.overwrite)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy)
    weights_path = teacher_weights_path(config) if needs_trained_teacher(config.method) else None
    data = run_data(config)
    with strategy.scope():
        teacher = run_teacher(config, METHODS.get(config.method), data.info.num_classes,
                              weights_path, data.validation, data.info.image_shape)[0]
    hypermodel = DistillerHyperModel(config, teacher, data)
    keras_tuner = make_tuner(tuner, hypermodel, hyperparameters, max_trials, epochs, config.seed,
                             tune_dir, None if config.strategy == "default" else strategy)
    hparams_dir = os.path.join(tune_dir, "hparams")
    write_hparams_config(hparams_dir, keras_tuner.oracle.get_space())
    keras_tuner.search(epochs=epochs, verbose=config.verbose,
                       callbacks=[keras.callbacks.TensorBoard(log_dir=hparams_dir)])
    rows = trial_rows(keras_tuner.oracle)
    write_tables(rows, tune_dir)
    if not any(row["status"] == "COMPLETED" for row in rows):
        raise SearchFailed(f"no trial of {tune_dir} completed; the first error: "
                           f"{rows[0].get('error')}")
    return Search(rows, config, tune_dir, weights_path)


def best_config(result):
    """The RunConfig that trains the best trial of a Search in full (the recipe's
    epochs), in train_dir/best, with the search's teacher."""
    config = result.config
    return dataclasses.replace(
        config, method_options={**config.method_options, **method_values(result.best)},
        teacher_weights=result.teacher_weights or config.teacher_weights,
        train_dir=os.path.join(config.train_dir, "best"), overwrite=False)


def trial_rows(oracle):
    """One dict per trial: trial, status, val_accuracy, best_epoch (1-based, among
    the epochs the trial trained), the hyperparameter values, and for a trial that
    failed its error; best first, unscored last."""
    rows = []
    for trial in oracle.trials.values():
        scored = trial.score is not None and not math.isnan(trial.score)
        results = (trial.trial_id, trial.status, float(trial.score) if scored else None,
                   trial.best_step + 1 if scored else None)
        rows.append(dict(zip(RESULT_COLUMNS, results), **trial.hyperparameters.values))
        if trial.message:
            rows[-1]["error"] = trial.message.strip().splitlines()[-1]
    return sorted(rows, key=lambda row: (row[OBJECTIVE] is None, -(row[OBJECTIVE] or 0.0),
                                         row["trial"]))


def _columns(rows):
    columns = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    return columns


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value).replace("|", "\\|")


def write_tables(rows, tune_dir):
    """trials.csv (full precision) and trials.md, best trial first, each written atomically."""
    columns = _columns(rows)
    table = io.StringIO()
    writer = csv.DictWriter(table, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(os.path.join(tune_dir, "trials.csv"), table.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(name)) for name in columns) + " |" for row in rows]
    files.write_text(os.path.join(tune_dir, "trials.md"), "\n".join(lines) + "\n")


def method_values(row):
    """The method's hyperparameter values in a trial row (not the tuner's own)."""
    return {name: value for name, value in row.items()
            if name not in RESULT_COLUMNS + ("error",) and not name.startswith("tuner/")}


def _hparam(item):
    if isinstance(item, hp_types.Float):
        return hparams_api.HParam(item.name, hparams_api.RealInterval(float(item.min_value),
                                                                      float(item.max_value)))
    if isinstance(item, hp_types.Int):
        return hparams_api.HParam(item.name, hparams_api.IntInterval(item.min_value,
                                                                     item.max_value))
    if isinstance(item, hp_types.Choice):
        return hparams_api.HParam(item.name, hparams_api.Discrete(item.values))
    if isinstance(item, hp_types.Boolean):
        return hparams_api.HParam(item.name, hparams_api.Discrete([True, False]))
    return hparams_api.HParam(item.name, hparams_api.Discrete([item.value]))


def write_hparams_config(hparams_dir, hp):
    """The HParams experiment of the search space (replacing an earlier one);
    keras-tuner's TensorBoard hook writes each trial's values under its trial id."""
    os.makedirs(hparams_dir, exist_ok=True)
    for path in glob.glob(os.path.join(hparams_dir, "events.out.tfevents.*")):
        os.remove(path)
    metrics = [hparams_api.Metric("epoch_accuracy", group="validation", display_name=OBJECTIVE),
               hparams_api.Metric("epoch_loss", group="validation", display_name="val_loss"),
               hparams_api.Metric("epoch_accuracy", group="train", display_name="accuracy")]
    writer = tf.summary.create_file_writer(hparams_dir)
    with writer.as_default():
        hparams_api.hparams_config(hparams=[_hparam(item) for item in hp.space], metrics=metrics)
    writer.close()


def format_best(row, completed, tune_dir, flagfile):
    """The end-of-search summary: the best trial's hyperparameters and where to look."""
    lines = ["", f"Best of {completed} completed trials: trial {row['trial']}, "
                 f"{OBJECTIVE} {row[OBJECTIVE]:.4f}"]
    lines += [f"  {name} = {_cell(value)}" for name, value in method_values(row).items()]
    lines += [f"All trials: {os.path.join(tune_dir, 'trials.md')}",
              f"Train the best in full: python main.py --flagfile={flagfile}",
              f"Compare in TensorBoard: tensorboard --logdir {os.path.join(tune_dir, 'hparams')}"]
    return "\n".join(lines)
