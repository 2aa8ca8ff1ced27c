"""Hyperparameter search over a distillation method's options with keras-tuner.

The teacher is trained (by the recipe, cached in train_dir/teacher/) or loaded
once and shared by every trial. A trial builds a fresh student and the method
from `METHODS.get(name).search_space(hp)` merged with the fixed options,
compiles the Distiller as a training run does and trains it with `model.fit`:
the first `epochs` epochs (after the method's init_epochs) of the full run, on
the full run's learning-rate schedule. The objective is the best `val_accuracy`.

Layout of train_dir/tune/ (keras-tuner's project directory; a re-run resumes it):
  oracle.json, trial_*/   the tuner's state and each trial's best weights
  search.json             the settings of the search, checked on resume
  trials.md, trials.csv   every trial, best first
  best.flags              the best trial as a flagfile of `main.py` (mode train)
  hparams/                TensorBoard HParams logs: the experiment, one run per trial
"""
import csv
import glob
import json
import math
import os
import shutil

import keras
import keras_tuner as kt
import tensorflow as tf
from keras_tuner.engine import hyperparameters as hp_types
from tensorboard.plugins.hparams import api as hparams_api

from sskd_tf.distill import METHODS, build_method
from sskd_tf.distill.catalog import flag_of_option
from sskd_tf.errors import SearchFailed, UserError
from sskd_tf.training import files
from sskd_tf.training.callbacks import NonFiniteGuard
from sskd_tf.training.run import build_distiller, build_student, run_datasets, teacher_weights_path
from sskd_tf.training.schedule import steps_per_epoch
from sskd_tf.training.strategy import make_strategy
from sskd_tf.training.teacher import load_teacher


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


TUNERS = {name: _retried_from_scratch(tuner_class) for name, tuner_class in (
    ("random", kt.RandomSearch), ("bayesian", kt.BayesianOptimization),
    ("hyperband", kt.Hyperband))}
OBJECTIVE = "val_accuracy"
RESULT_COLUMNS = ("trial", "status", OBJECTIVE, "best_epoch")
TUNE_DIR = "tune"
SETTINGS_FILE = "search.json"
UNCHECKED_SETTINGS = ("train_dir", "data_dir", "strategy", "jit", "deterministic", "overwrite",
                      "verbose")


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
    same seed and reads the data afresh, so that trials differ only by their
    hyperparameters and a resumed search replays what an uninterrupted one would."""

    def __init__(self, config, teacher, info):
        super().__init__(name=f"{config.method}_distiller")
        self.config = config
        self.teacher = teacher
        self.info = info
        self.steps_in_epoch = steps_per_epoch(config.batch_size, info.num_train)

    def build(self, hp):
        keras.utils.set_random_seed(self.config.seed)
        options = {**self.config.method_options,
                   **METHODS.get(self.config.method).search_space(hp)}
        method = build_method(self.config.method, **options)
        student = build_student(self.config, self.info)
        method.prepare(self.teacher, run_datasets(self.config)[0].take(self.steps_in_epoch))
        return build_distiller(self.config, method, self.teacher, student, self.steps_in_epoch)

    def fit(self, hp, model, epochs=1, initial_epoch=0, callbacks=(), **kwargs):
        """model.fit on fresh datasets for the method's init_epochs and then `epochs`,
        as a run counts them; a trial that diverges stops (and fails) as a run does.
        A trial that continues another (Hyperband) starts its step count where that
        one stopped, for the learning rate and the clipping rule, and its data stream at
        the pass that one would have trained next. A trial run again
        after an interruption starts its TensorBoard curves over."""
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.TensorBoard):
                for split in ("train", "validation"):
                    shutil.rmtree(os.path.join(callback.log_dir, split), ignore_errors=True)
        offset = model.method.init_epochs
        initial_epoch = initial_epoch + offset if initial_epoch else 0
        model.optimizer.iterations.assign(initial_epoch * self.steps_in_epoch)
        train_ds, val_ds, _ = run_datasets(self.config, start_pass=initial_epoch)
        callbacks = list(callbacks) + [NonFiniteGuard(self.config.max_consecutive_skips)]
        return model.fit(train_ds, validation_data=val_ds, epochs=epochs + offset,
                         initial_epoch=initial_epoch, steps_per_epoch=self.steps_in_epoch,
                         callbacks=callbacks, shuffle=False, **kwargs)


def make_tuner(name, hypermodel, hyperparameters, max_trials, epochs, seed, tune_dir, strategy):
    """The keras-tuner tuner `name`, resuming the project in `tune_dir` if any.
    Hyperband's brackets go up to `epochs`; --max_trials caps its trial count.
    Failed trials (a diverged one, say) are recorded and the search goes on."""
    if name not in TUNERS:
        raise UserError(f"unknown tuner {name!r}; choose one of: {', '.join(TUNERS)}")
    common = dict(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=hyperparameters,
                  seed=seed, directory=os.path.dirname(tune_dir),
                  project_name=os.path.basename(tune_dir), distribution_strategy=strategy,
                  max_consecutive_failed_trials=max_trials + 1)
    if name == "hyperband":
        tuner = TUNERS[name](hypermodel, max_epochs=epochs, **common)
        tuner.oracle.max_trials = max_trials
        return tuner
    return TUNERS[name](hypermodel, max_trials=max_trials, **common)


def _settings(config, tuner, epochs):
    """What a trial's result depends on; where things are and how they run may change."""
    settings = {k: v for k, v in vars(config).items() if k not in UNCHECKED_SETTINGS}
    settings.update(tuner=tuner, tune_epochs=epochs)
    return json.loads(json.dumps(settings))


def _prepare_tune_dir(tune_dir, settings, overwrite):
    """Start over (overwrite) or check that a search to resume has the same settings."""
    if overwrite and os.path.isdir(tune_dir):
        shutil.rmtree(tune_dir)
    path = os.path.join(tune_dir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as handle:
            previous = json.load(handle)
        changed = sorted(k for k in set(previous) | set(settings)
                         if previous.get(k) != settings.get(k))
        if changed:
            raise UserError(
                f"{tune_dir} holds a search with other settings ({', '.join(changed)}); "
                "pass --overwrite to start over or choose another --train_dir")
    files.ensure_writable_dir(tune_dir)
    files.write_json(path, settings)


def search(config, tuner="random", max_trials=10, epochs=2):
    """Run (or resume) the search; write the table, best.flags and the HParams
    logs to train_dir/tune/ and return the ranked rows (see `trial_rows`)."""
    config = config.resolved()
    tune_dir = os.path.join(config.train_dir, TUNE_DIR)
    hyperparameters = search_space(config)
    if not hyperparameters.space:
        raise UserError(f"--method={config.method} leaves nothing to search: it declares "
                         "no search space")
    if not tuned_names(hyperparameters):
        raise UserError(f"--method={config.method} leaves nothing to search: --method_options "
                         f"fixes all of {', '.join(hyperparameters.values)}")
    _prepare_tune_dir(tune_dir, _settings(config, tuner, epochs), config.overwrite)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy)
    needs_teacher = METHODS.get(config.method).needs_teacher
    weights_path = teacher_weights_path(config) if needs_teacher else None
    _, val_ds, info = run_datasets(config)
    with strategy.scope():
        teacher = (load_teacher(config, info.num_classes, weights_path, val_ds, info.image_shape)[0]
                   if needs_teacher else None)
    hypermodel = DistillerHyperModel(config, teacher, info)
    keras_tuner = make_tuner(tuner, hypermodel, hyperparameters, max_trials, epochs, config.seed,
                             tune_dir, None if config.strategy == "default" else strategy)
    hparams_dir = os.path.join(tune_dir, "hparams")
    write_hparams_config(hparams_dir, keras_tuner.oracle.get_space())
    keras_tuner.search(epochs=epochs, verbose=config.verbose,
                       callbacks=[keras.callbacks.TensorBoard(log_dir=hparams_dir)])
    rows = trial_rows(keras_tuner.oracle)
    write_tables(rows, tune_dir)
    completed = [row for row in rows if row["status"] == "COMPLETED"]
    if not completed:
        raise SearchFailed(f"no trial of {tune_dir} completed; the first error: "
                           f"{rows[0].get('error')}")
    flagfile = os.path.join(tune_dir, "best.flags")
    write_flagfile(flagfile, config, completed[0], weights_path)
    print(format_best(completed[0], len(completed), tune_dir, flagfile), flush=True)
    return rows


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
    """trials.csv (full precision) and trials.md, best trial first."""
    columns = _columns(rows)
    with open(os.path.join(tune_dir, "trials.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(name)) for name in columns) + " |" for row in rows]
    with open(os.path.join(tune_dir, "trials.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def method_values(row):
    """The method's hyperparameter values in a trial row (not the tuner's own)."""
    return {name: value for name, value in row.items()
            if name not in RESULT_COLUMNS + ("error",) and not name.startswith("tuner/")}


def _flag(name, value):
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (tuple, list)):
        value = ",".join(str(item) for item in value)
    return f"--{name}={value}"


def write_flagfile(path, config, row, teacher_weights):
    """The best trial as the flags of a full training run (`--mode=train`, the
    recipe's epochs) in train_dir/best, reusing the search's teacher."""
    options = {**config.method_options, **method_values(row)}
    flag_values = {"mode": "train", "method": config.method}
    for option, flag in flag_of_option(config.method).items():
        if option in options:
            flag_values[flag] = options.pop(option)
    flag_values["method_options"] = [f"{name}={value!r}" if isinstance(value, float)
                                     else f"{name}={value}" for name, value in options.items()]
    flag_values.update(teacher=config.teacher, student=config.student)
    if teacher_weights:
        flag_values["teacher_weights"] = teacher_weights
    flag_values.update(dataset=config.dataset, data_dir=config.data_dir, recipe=config.recipe,
                       epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=config.learning_rate,
                       lr_decay_points=config.lr_decay_points, lr_decay_rate=config.lr_decay_rate,
                       weight_decay=config.weight_decay,
                       train_dir=os.path.join(config.train_dir, "best"), seed=config.seed,
                       strategy=config.strategy, jit=config.jit,
                       deterministic=config.deterministic,
                       max_consecutive_skips=config.max_consecutive_skips)
    lines = [f"# Best trial {row['trial']} of {os.path.dirname(path)}: "
             f"{OBJECTIVE} {row[OBJECTIVE]:.4f}.",
             f"# Train it in full: python main.py --flagfile={path}"]
    lines += [_flag(name, value) for name, value in flag_values.items()
              if value is not None and value != []]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


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
