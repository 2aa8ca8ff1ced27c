"""One training run, as KD_methods_with_TF `train_w_distill.py` does it in TF1:
get a teacher (load it, or train it first and cache it), distil a student with
the chosen method, validate every epoch, log, checkpoint and save the results.

Layout of a run directory:
  checkpoints/      tf.train.CheckpointManager checkpoints (resume point)
  logs/             TensorBoard events (train/, validation/, the run's flags)
  history.csv       one row per epoch (survives a resume)
  student.keras     the final student, with its distillation taps
  student_export/   the inference-only SavedModel (logits, no taps)
  results.json      last and best validation accuracy, epochs, wall time
  teacher/          the teacher's own run, when it was trained here
"""
import dataclasses
import math
import os
import time

import keras
import tensorflow as tf

from sskd_tf import data as datasets
from sskd_tf import models
from sskd_tf.distill import METHODS, build_method
from sskd_tf.errors import UserError
from sskd_tf.training import callbacks as run_callbacks
from sskd_tf.training import files, multi_worker
from sskd_tf.training.config import RESULTS_FILE, log
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.memory import check_memory
from sskd_tf.training.optimizers import build_optimizer
from sskd_tf.training.recipes import RECIPES
from sskd_tf.training.schedule import learning_rate_schedule, steps_per_epoch
from sskd_tf.training import precision
from sskd_tf.training.strategy import make_strategy
from sskd_tf.training.teacher import check_cached_teacher, load_teacher


def teacher_weights_path(config):
    """--teacher_weights, None for a teacher read from a .keras file (it holds its
    weights), or the teacher trained by the same recipe in train_dir/teacher/
    (trained now, as a run of its own, unless an earlier run finished it there;
    training/teacher.py checks that cached teacher)."""
    if config.teacher_weights:
        return config.teacher_weights
    if config.teacher.endswith(".keras"):
        return None
    teacher_dir = os.path.join(config.train_dir, "teacher")
    results_path = os.path.join(teacher_dir, RESULTS_FILE)
    if os.path.exists(results_path):
        check_cached_teacher(config, results_path)
        log(config, f"Reusing the teacher trained in {teacher_dir}")
    else:
        log(config, f"Training the teacher {config.teacher} first, in {teacher_dir}")
        train(dataclasses.replace(config, method="none", student=config.teacher,
                                  student_taps=config.teacher_taps, method_options={},
                                  train_dir=teacher_dir, overwrite=False, teacher_weights=None))
    return os.path.join(teacher_dir, "student.keras")


def run_datasets(config, start_pass=0, skip_steps=0):
    """(train_ds, val_ds, info) of a run; the training stream starts at batch `skip_steps`
    of pass `start_pass`."""
    return datasets.build_datasets(
        config.dataset, config.data_dir, batch_size=config.batch_size,
        eval_batch_size=RECIPES.get(config.recipe).eval_batch_size, recipe=config.recipe,
        seed=config.seed, take_train=config.take_train, take_test=config.take_test,
        image_size=config.image_size, download=config.download,
        validation_split=config.validation_split, start_pass=start_pass, skip_steps=skip_steps)


def build_student(config, info):
    """The student network of `config` for the data described by `info`."""
    return models.build_model(config.student, info.num_classes, info.image_shape,
                              weight_decay=config.weight_decay, taps=config.student_taps,
                              role="student", keras_batch_norm=config.keras_batch_norm)


def _check_run_dir(config):
    results = os.path.join(config.train_dir, RESULTS_FILE)
    if os.path.exists(results) and not config.overwrite:
        raise UserError(
            f"{config.train_dir} holds a finished run; pass --overwrite to replace it "
            "or choose another --train_dir")
    if config.overwrite:
        files.clear_run(config.train_dir)
    files.ensure_writable_dir(config.train_dir)
    files.remove_leftovers(config.train_dir)


def build_distiller(config, method, teacher, student, steps_in_epoch):
    """The compiled distiller with the recipe's momentum optimizer (config.optimizer:
    TF1's Nesterov update or Keras' SGD, see training/optimizers.py) and LR schedule."""
    recipe = RECIPES.get(config.recipe)
    schedule = learning_rate_schedule(
        config.learning_rate, config.lr_decay_points, config.lr_decay_rate, config.epochs,
        steps_in_epoch, init_epochs=method.init_epochs)
    optimizer = build_optimizer(config.optimizer or recipe.optimizer, schedule,
                                momentum=recipe.momentum, nesterov=recipe.nesterov)
    distiller = Distiller(student, method, teacher, steps_in_epoch=steps_in_epoch,
                          clip_rule=recipe.clip_rule)
    distiller.build((None,) + tuple(student.input_shape[1:]))
    distiller.compile(optimizer=optimizer, jit_compile=config.jit)
    optimizer.build(distiller.trainable_variables)
    return distiller


def _results(config, history_rows, wall_time, teacher_accuracy, total_epochs):
    val_accuracy = [float(row["val_accuracy"]) for row in history_rows]
    return {
        "method": config.method,
        "teacher": config.teacher if METHODS.get(config.method).needs_teacher else None,
        "student": config.student,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "recipe": config.recipe,
        "seed": config.seed,
        "epochs": total_epochs,
        "last_val_accuracy": val_accuracy[-1] if val_accuracy else None,
        "best_val_accuracy": max(val_accuracy) if val_accuracy else None,
        "teacher_val_accuracy": teacher_accuracy,
        "wall_time_s": wall_time,
        "val_accuracy": val_accuracy,
    }


def train(config):
    """Run `config` to the end (resuming from its last checkpoint) and return its results."""
    config = config.resolved()
    if config.strategy != "multi_worker":
        return _train(config)
    with multi_worker.lost_workers_reported():
        if multi_worker.is_chief():
            return _train(config)
        with multi_worker.scratch_run_dir(config.train_dir, config.overwrite) as scratch:
            return _train(dataclasses.replace(config, train_dir=scratch))


def _train(config):
    check_memory(config)
    _check_run_dir(config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy)
    # The stream starts where the checkpoint stopped, so that a resumed run trains on the
    # batches an uninterrupted one would have.
    start_pass, skip_steps = run_callbacks.saved_progress(config.train_dir)
    train_ds, val_ds, info = run_datasets(config, start_pass, skip_steps)
    steps_in_epoch = steps_per_epoch(config.batch_size, info.num_train)
    needs_teacher = METHODS.get(config.method).needs_teacher
    weights_path = teacher_weights_path(config) if needs_teacher else None
    start = time.time()
    with strategy.scope():
        method = build_method(config.method, **config.method_options)
        jit_advice = method.jit_advice() if config.jit else ""
        if jit_advice:
            log(config, f"Note: {jit_advice}")
        with precision.dtype_policy(config.mixed_precision):
            teacher, teacher_accuracy = (load_teacher(config, info.num_classes, weights_path, val_ds,
                                                      info.image_shape)
                                         if needs_teacher else (None, None))
            student = build_student(config, info)
        method.prepare(teacher, train_ds.take(steps_in_epoch))
        distiller = build_distiller(config, method, teacher, student, steps_in_epoch)
    total_epochs = config.epochs + method.init_epochs
    checkpoint = run_callbacks.RunCheckpoint(config.train_dir, distiller)
    epochs_done, steps_done, previous_time = checkpoint.restore()
    if epochs_done or steps_done:
        log(config, f"Resuming {config.train_dir} at epoch {epochs_done + 1}, step {steps_done}")
    callbacks = run_callbacks.standard_callbacks(config, checkpoint)
    fit = dict(validation_data=val_ds, epochs=total_epochs, callbacks=callbacks,
               verbose=config.verbose, shuffle=False, steps_per_epoch=steps_in_epoch)
    if steps_done and epochs_done < total_epochs:
        # The rest of the interrupted epoch, then the stream past it (skipping those batches
        # prepares them again: at most one pass of the input pipeline, which runs far ahead
        # of training).
        remaining = steps_in_epoch - steps_done
        checkpoint.step_offset = steps_done
        distiller.fit(train_ds, **dict(fit, epochs=epochs_done + 1, initial_epoch=epochs_done,
                                       steps_per_epoch=remaining))
        train_ds = train_ds.skip(remaining)
        epochs_done += 1
    if epochs_done < total_epochs:
        distiller.fit(train_ds, initial_epoch=epochs_done, **fit)
    wall_time = time.time() - start + previous_time
    results = _results(config, run_callbacks.read_history(config.train_dir), wall_time,
                       teacher_accuracy, total_epochs)
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
        ("wall time", f"{results['wall_time_s']:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "| " + "result".ljust(width) + " | value |", "|" + "-" * (width + 2) + "|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _percent(value):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"

