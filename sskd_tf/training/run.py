"""One training run, as KD_methods_with_TF `train_w_distill.py` does it in TF1:
get a teacher (load it, or train it first and cache it), distil a student with
the chosen method, validate every epoch, log, checkpoint and save the results.

Layout of a run directory (the run directory as a contract: README "When things go wrong"):
  run.json          the run's identity: the settings its numbers depend on, their
                    fingerprint, the digest of its data (training/identity.py)
  .lock             locked by the process working in the directory
  checkpoints/      tf.train.CheckpointManager checkpoints (the resume point; they hold
                    the run's history too)
  logs/             TensorBoard events (train/, validation/, the run's flags)
  history.csv       one row per finished epoch, rewritten from the checkpoint
  student.keras     the final student, with its distillation taps
  student_export/   the inference-only SavedModel (logits, no taps)
  results.json      last and best validation accuracy (and a teacher's the method trains
                    alongside: trained_teacher_*), epochs, wall time
  teacher/          the teacher's own run, when it was trained here
"""
import dataclasses
import math
import os
import shutil
import time

import keras
import tensorflow as tf

from sskd_tf import data as datasets
from sskd_tf import models
from sskd_tf.distill import METHODS, build_method
from sskd_tf.distill.names import BASELINE
from sskd_tf.errors import UserError
from sskd_tf.losses import loss_of
from sskd_tf.training import callbacks as run_callbacks
from sskd_tf.training import files, identity, multi_worker
from sskd_tf.training.config import RESULTS_FILE, log
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.loop import fit_epochs
from sskd_tf.training.memory import check_memory
from sskd_tf.training.optimizers import build_optimizer
from sskd_tf.training.recipes import RECIPES
from sskd_tf.training.schedule import EpochCut, learning_rate_schedule
from sskd_tf.training import precision
from sskd_tf.training.strategy import make_strategy
from sskd_tf.training.teacher import run_teacher

TEACHER_DIR = "teacher"
# The history's column of a teacher trained with the student (train_step.teacher_metrics).
TRAINED_TEACHER_ACCURACY = "val_teacher_accuracy"
# What a run directory holds once a run has started in it (beside run.json).
RUN_ENTRIES = (run_callbacks.CHECKPOINT_DIR, run_callbacks.HISTORY_FILE, RESULTS_FILE)


def teacher_run_config(config):
    """The config of the run that trains `config`'s teacher in train_dir/teacher/: the
    same recipe, data and seed, no distillation. A learning rate that is the recipe's for
    the student becomes the recipe's for the teacher (`Recipe.learning_rate_for`: crd2020
    trains a ShuffleNet at 0.01, its teachers at 0.05); any other is kept."""
    recipe = RECIPES.get(config.recipe)
    learning_rate = config.learning_rate
    if learning_rate == recipe.learning_rate_for(config.student):
        learning_rate = recipe.learning_rate_for(config.teacher)
    return dataclasses.replace(
        config, method=BASELINE, student=config.teacher, student_taps=config.teacher_taps,
        method_options={}, train_dir=os.path.join(config.train_dir, TEACHER_DIR),
        overwrite=False, teacher_weights=None, learning_rate=learning_rate)


def needs_trained_teacher(method_name):
    """Whether a run of the method distils from a trained teacher (loaded, or trained
    first in train_dir/teacher/)."""
    method_class = METHODS.get(method_name)
    return method_class.needs_teacher and method_class.pretrained_teacher


def teacher_identity(config):
    """The identity of the teacher `config` distils from: the digest of --teacher_weights;
    "in the teacher file" for a .keras teacher (whose digest is the run's `teacher`); the
    identity of its own run in train_dir/teacher/; None for a method without a trained
    teacher (the run's settings say all of one it trains itself)."""
    if not needs_trained_teacher(config.method):
        return None
    if config.teacher_weights:
        return {"weights": identity.file_digest(config.teacher_weights, "--teacher_weights")}
    if config.teacher.endswith(".keras"):
        return {"weights": "the teacher file"}
    return {"run": identity.run_identity(teacher_run_config(config))}


def has_started(train_dir):
    """Whether a run in train_dir has saved anything of its training (a checkpoint, its
    history, its results): until then its run.json records only what it was asked."""
    return any(os.path.exists(os.path.join(train_dir, entry)) for entry in RUN_ENTRIES)


def check_cached_teacher(config):
    """A teacher cached in train_dir/teacher/ must be the one `config` asks for: one of
    other settings is refused, or with --overwrite removed to be trained again. Nothing
    to check when the teacher's weights come from a file, or when no teacher run there
    has started."""
    if config.teacher_weights or config.teacher.endswith(".keras"):
        return
    wanted = identity.run_identity(teacher_run_config(config))
    teacher_dir = os.path.join(config.train_dir, TEACHER_DIR)
    if not has_started(teacher_dir):
        return
    if config.overwrite:
        record = identity.read_record(teacher_dir)
        if record is None or record["identity"] != wanted:
            with files.run_lock(teacher_dir):
                files.clear_run(teacher_dir)
        return
    identity.check_identity(teacher_dir, wanted, what="teacher")


def teacher_weights_path(config):
    """--teacher_weights, None for a teacher read from a .keras file (it holds its
    weights), or the teacher trained by the same recipe in train_dir/teacher/
    (trained now, as a run of its own, unless an earlier run finished it there with the
    same settings: `check_cached_teacher`)."""
    if config.teacher_weights:
        return config.teacher_weights
    if config.teacher.endswith(".keras"):
        return None
    check_cached_teacher(config)
    teacher = teacher_run_config(config)
    if os.path.exists(os.path.join(teacher.train_dir, RESULTS_FILE)):
        log(config, f"Reusing the teacher trained in {teacher.train_dir}")
    else:
        log(config, f"Training the teacher {config.teacher} first, in {teacher.train_dir}")
        train(teacher)
    return os.path.join(teacher.train_dir, "student.keras")


def run_data(config):
    """The RunData of a run (sskd_tf.data.pipeline)."""
    return datasets.load_run_data(
        config.dataset, config.data_dir, batch_size=config.batch_size,
        eval_batch_size=RECIPES.get(config.recipe).eval_batch_size, recipe=config.recipe,
        seed=config.seed, take_train=config.take_train, take_test=config.take_test,
        image_size=config.image_size, download=config.download,
        validation_split=config.validation_split)


def epoch_cut(config, info):
    """The run's EpochCut over the training examples of `info`."""
    return EpochCut(config.epoch_cut, info.num_train, config.batch_size)


def build_student(config, info):
    """The student network of `config` for the data described by `info`."""
    return models.build_model(config.student, info.num_classes, info.image_shape,
                              weight_decay=config.weight_decay, taps=config.student_taps,
                              role="student", keras_batch_norm=config.keras_batch_norm)


def build_distiller(config, method, teacher, student, cut):
    """The compiled distiller with the recipe's momentum optimizer (config.optimizer:
    TF1's Nesterov update or Keras' SGD, see training/optimizers.py) and LR schedule over
    the epochs of `cut`."""
    recipe = RECIPES.get(config.recipe)
    schedule = learning_rate_schedule(
        config.learning_rate, config.lr_decay_points, config.lr_decay_rate, config.epochs,
        cut, offset=method.stage_plan().offset)
    optimizer = build_optimizer(config.optimizer or recipe.optimizer, schedule,
                                momentum=recipe.momentum, nesterov=recipe.nesterov)
    distiller = Distiller(teacher, student, loss_of(method), epoch_cut=cut,
                          clip_rule=recipe.clip_rule, sync_batch_norm=config.sync_batch_norm)
    distiller.build((None,) + tuple(student.input_shape[1:]))
    distiller.compile(optimizer=optimizer, jit_compile=config.jit)
    optimizer.build(distiller.trainable_variables)
    return distiller


def with_train_dir(config):
    """`config` with its train_dir, runs/<method>-<student>-<dataset>-<fingerprint> when
    none is given (`identity.default_train_dir`)."""
    if config.train_dir:
        return config
    run = identity.run_identity(config, teacher_identity(dataclasses.replace(config,
                                                                             train_dir="")))
    return dataclasses.replace(config, train_dir=identity.default_train_dir(
        config.method, (config.student, config.dataset), run))


def train(config):
    """Run `config` to the end (resuming from its last checkpoint) and return its results."""
    config = with_train_dir(config.resolved())
    log(config, f"Run directory: {config.train_dir}")
    make_strategy(config.strategy)  # before anything runs TensorFlow (the memory check does)
    if config.strategy != "multi_worker":
        return _train(config)
    with multi_worker.lost_workers_reported():
        if multi_worker.is_chief():
            return _train(config)
        with multi_worker.scratch_run_dir(config.train_dir, config.overwrite) as scratch:
            return _train(dataclasses.replace(config, train_dir=scratch))


def _train(config):
    check_memory(config)
    with files.run_lock(config.train_dir):
        record = _prepare_run_dir(config)
        return _train_in(config, record)


def _resumable_settings(config):
    return {name: getattr(config, name) for name in identity.RESUMABLE_FIELDS}


def _prepare_run_dir(config):
    """Check the run directory before any work, and return its record (run.json): a
    started run (`has_started`) of other settings is refused (--overwrite clears it), so
    is a finished run, a started run without a record (an earlier version's) and an
    unparsable checkpoint state. The record of a run that never started is replaced."""
    if needs_trained_teacher(config.method):
        check_cached_teacher(config)
    wanted = identity.run_identity(config, teacher_identity(config))
    if config.overwrite:
        files.clear_run(config.train_dir, keep=(TEACHER_DIR,))
    record = None
    if has_started(config.train_dir):
        record = identity.check_identity(config.train_dir, wanted)
        if record is None:
            raise UserError(f"{config.train_dir} holds a run without its {identity.RUN_FILE} "
                            "(an earlier version's, or the file was removed), so its settings "
                            "are unknown; pass --overwrite to start over or choose another "
                            "--train_dir")
    if os.path.exists(os.path.join(config.train_dir, RESULTS_FILE)):
        raise UserError(f"{config.train_dir} holds a finished run; pass --overwrite to replace "
                        "it or choose another --train_dir")
    run_callbacks.check_checkpoint_dir(
        os.path.join(config.train_dir, run_callbacks.CHECKPOINT_DIR))
    files.remove_leftovers(config.train_dir)
    if record is None:
        record = identity.record_identity(config.train_dir, wanted, _resumable_settings(config))
    return record


def _results(config, history, wall_time, teacher_accuracy, total_epochs):
    """results.json of a finished run, from its checkpointed history; a run whose history
    does not hold one row per epoch reports nothing (UserError)."""
    if [row["epoch"] for row in history] != list(range(total_epochs)):
        raise UserError(
            f"{config.train_dir}: the run's history holds epochs "
            f"{[row['epoch'] for row in history]}, not 0-{total_epochs - 1} (were its "
            "checkpoints changed during the run?); results.json is not written; pass "
            "--overwrite to start over")
    val_accuracy = [float(row["val_accuracy"]) for row in history]
    # A teacher the method's stages train (mutual learning): its own validation accuracy.
    trained_teacher = [float(row[TRAINED_TEACHER_ACCURACY]) for row in history
                       if TRAINED_TEACHER_ACCURACY in row]
    return {
        "method": config.method,
        "teacher": config.teacher if METHODS.get(config.method).needs_teacher else None,
        "student": config.student,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "recipe": config.recipe,
        "seed": config.seed,
        "epochs": total_epochs,
        "last_val_accuracy": val_accuracy[-1],
        "best_val_accuracy": max(val_accuracy),
        "teacher_val_accuracy": teacher_accuracy,
        "trained_teacher_last_val_accuracy": trained_teacher[-1] if trained_teacher else None,
        "trained_teacher_best_val_accuracy": max(trained_teacher) if trained_teacher else None,
        "wall_time_s": wall_time,
        "val_accuracy": val_accuracy,
    }


def _train_in(config, record):
    method_class = METHODS.get(config.method)
    weights_path = teacher_weights_path(config) if needs_trained_teacher(config.method) else None
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy)
    data = run_data(config)
    identity.check_data(config.train_dir, record, data.digest)
    cut = epoch_cut(config, data.info)
    start = time.time()
    with strategy.scope():
        method = build_method(config.method, **config.method_options)
        jit_advice = method.jit_advice() if config.jit else ""
        if jit_advice:
            log(config, f"Note: {jit_advice}")
        with precision.dtype_policy(config.mixed_precision):
            teacher, teacher_accuracy = run_teacher(config, method_class, data.info.num_classes,
                                                    weights_path, data.validation,
                                                    data.info.image_shape)
            student = build_student(config, data.info)
        method.prepare(teacher, data.training(0, cut.full_batches, method.batch_inputs())
                       .take(cut.first_step(1)))
        distiller = build_distiller(config, method, teacher, student, cut)
    total_epochs = method.stage_plan().total_epochs(config.epochs)
    checkpoint = run_callbacks.RunCheckpoint(config.train_dir, distiller, cut, total_epochs)
    epochs_done, previous_time = checkpoint.restore()
    step = int(checkpoint.model_step())
    if step:
        log(config, f"Resuming {config.train_dir} at epoch {epochs_done + 1}, step "
                    f"{step - cut.first_step(epochs_done)}")
    else:
        shutil.rmtree(os.path.join(config.train_dir, "logs"), ignore_errors=True)
    with checkpoint.signals_handled():
        fit_epochs(distiller, lambda start_step: data.training(
            start_step, cut.full_batches, method.batch_inputs()), cut,
                   total_epochs, run_callbacks.standard_callbacks(config, checkpoint),
                   validation_data=data.validation, verbose=config.verbose)
    wall_time = time.time() - start + previous_time
    results = _results(config, checkpoint.rows, wall_time, teacher_accuracy, total_epochs)
    with files.writing("the final student and results", config.train_dir):
        files.save_student(student, config.train_dir)
        files.write_json(os.path.join(config.train_dir, RESULTS_FILE), results)
    log(config, format_results(results))
    return results


def format_results(results):
    """The end-of-run table."""
    rows = [
        ("method", results["method"]),
        ("student / teacher", f"{results['student']} / {results['teacher'] or '-'}"),
        ("dataset, epochs", f"{results['dataset']}, {results['epochs']}"),
        ("last val accuracy", _percent(results["last_val_accuracy"])),
        ("best val accuracy", _percent(results["best_val_accuracy"])),
        ("teacher val accuracy", _percent(results["teacher_val_accuracy"])),
    ]
    if results.get("trained_teacher_last_val_accuracy") is not None:
        rows += [("trained teacher last val accuracy",
                  _percent(results["trained_teacher_last_val_accuracy"])),
                 ("trained teacher best val accuracy",
                  _percent(results["trained_teacher_best_val_accuracy"]))]
    rows.append(("wall time", f"{results['wall_time_s']:.1f} s"))
    width = max(len(name) for name, _ in rows)
    lines = ["", "| " + "result".ljust(width) + " | value |", "|" + "-" * (width + 2) + "|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _percent(value):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"
