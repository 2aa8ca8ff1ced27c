"""The report of `--mode=compare` (sskd_tf/modes/compare.py) on finished runs: one
summary row per method, the exits of self-distilled students, results.md, results.csv
and val_accuracy.png.

Two "best" accuracies are reported. The mean over seeds of each run's best epoch (the best
of each curve, then averaged) is what a reader of per-run logs would quote; the authors'
`autotrain.py` instead averages the runs' validation curves epoch by epoch and reads the last
and best point of that mean curve. The mean curve's last point is the mean of the last
accuracies; its best is never above the mean of per-run bests, and below it unless one epoch
is the best of every run.
"""
import csv
import io
import math
import os

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sskd_tf import data as datasets
from sskd_tf.distill import build_method
from sskd_tf.training import files
from sskd_tf.training.callbacks import read_history, trained_networks
from sskd_tf.training.run import build_student, run_data
from sskd_tf.training.schedule import EpochCut

TRAIN_TIME_COLUMN = "train_time_s"
CSV_COLUMNS = ("method", "seeds", "epochs", "last_val_accuracy_mean", "last_val_accuracy_std",
               "best_val_accuracy_mean", "best_val_accuracy_std",
               "mean_curve_best_val_accuracy", "mean_curve_best_epoch", "step_time_s")


def step_time(config, results):
    """Seconds per training step of a finished run: the median over epochs of the epoch's
    training time (history.csv column train_time_s) over its steps (column steps);
    without them, the run's wall time over all its steps (which includes validation and
    checkpoints)."""
    history = read_history(config.train_dir)
    if history and {TRAIN_TIME_COLUMN, "steps"} <= set(history[0]):
        return float(np.median([float(row[TRAIN_TIME_COLUMN]) / float(row["steps"])
                                for row in history]))
    config = config.resolved()
    num_train = len(range(datasets.get_dataset_info(config.dataset).num_train)[:config.take_train])
    cut = EpochCut(config.epoch_cut, num_train, config.batch_size)
    return results["wall_time_s"] / cut.total_steps(results["epochs"])


def mean_std(values):
    """Mean and sample standard deviation (NaN for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def mean_curve(results):
    """The runs' validation accuracy curves averaged epoch by epoch (autotrain.py)."""
    return np.asarray([r["val_accuracy"] for r in results], dtype=float).mean(axis=0)


def summary_row(method, configs, results):
    """One method's row: mean ± std over seeds of the last and of each run's best
    accuracy, the best point of the mean curve (value, 1-based epoch), the step time."""
    last = mean_std([r["last_val_accuracy"] for r in results])
    best = mean_std([r["best_val_accuracy"] for r in results])
    curve = mean_curve(results)
    return {
        "method": method,
        "seeds": len(results),
        "epochs": results[0]["epochs"],
        "last_val_accuracy_mean": last[0],
        "last_val_accuracy_std": last[1],
        "best_val_accuracy_mean": best[0],
        "best_val_accuracy_std": best[1],
        "mean_curve_best_val_accuracy": float(curve.max()),
        "mean_curve_best_epoch": int(curve.argmax()) + 1,
        "step_time_s": float(np.mean([step_time(c, r) for c, r in zip(configs, results)])),
    }


def evaluate_exits(config):
    """Validation accuracy and FLOPs of every exit of a finished self_distill-like run,
    shallowest first, from its last checkpoint."""
    config = config.resolved()
    data = run_data(config)
    val_ds, info = data.validation, data.info
    student = build_student(config, info)
    method = build_method(config.method, **config.method_options)
    method.exit_logits(student(tf.zeros((1,) + tuple(info.image_shape))))
    latest = tf.train.latest_checkpoint(os.path.join(config.train_dir, "checkpoints"))
    status = tf.train.Checkpoint(**trained_networks(student, method)).restore(latest)
    status.expect_partial().assert_existing_objects_matched()

    @tf.function
    def exit_logits(images):
        return method.exit_logits(student(images, training=False), training=False)

    accuracies = None
    for images, labels in val_ds:
        logits = exit_logits(images)
        accuracies = accuracies or [keras.metrics.SparseCategoricalAccuracy() for _ in logits]
        for accuracy, exit_logit in zip(accuracies, logits):
            accuracy.update_state(labels, exit_logit)
    return {"val_accuracy": [float(a.result()) for a in accuracies],
            "flops": method.exit_flops(student)}


def exit_summary(per_seed):
    """Mean and std over seeds of each exit's accuracy, with its FLOPs."""
    by_exit = zip(*[run["val_accuracy"] for run in per_seed])
    return [{"exit": index, "flops": flops, "val_accuracy": mean_std(values)}
            for index, (flops, values) in enumerate(zip(per_seed[0]["flops"], by_exit))]


def write_outputs(root, base, rows, results, exits):
    """results.md, results.csv and val_accuracy.png in `root`, each written atomically."""
    os.makedirs(root, exist_ok=True)
    files.write_text(os.path.join(root, "results.md"), markdown(base, rows, results, exits))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if _missing(v) else v for k, v in row.items()} for row in rows)
    files.write_text(os.path.join(root, "results.csv"), table.getvalue())
    plot_val_accuracy(os.path.join(root, "val_accuracy.png"), results)


def _missing(value):
    return isinstance(value, float) and math.isnan(value)


def _percent(mean, std):
    return f"{100 * mean:.2f}" + ("" if _missing(std) else f" ± {100 * std:.2f}")


def markdown(base, rows, results, exits):
    """results.md: the settings, the method table and one exit table per self-distilled method."""
    resolved = base.resolved()
    teacher_accuracy = next((r[0]["teacher_val_accuracy"] for r in results.values()
                             if r[0]["teacher_val_accuracy"] is not None), None)
    seeds = [str(base.seed + k) for k in range(rows[0]["seeds"])]
    lines = [
        "# Comparison of distillation methods", "",
        f"{resolved.dataset}, recipe {resolved.recipe}, student {resolved.student}, "
        f"batch {resolved.batch_size}, seeds {', '.join(seeds)}.",
    ]
    if teacher_accuracy is not None:
        lines.append(
            f"Teacher {resolved.teacher}: validation accuracy {100 * teacher_accuracy:.2f}%.")
    lines += [
        "Accuracies in %, mean ± sample std over seeds. \"Mean of per-run bests\" averages "
        "each run's best epoch; \"best of the mean curve\" is the best epoch (in brackets) of "
        "the runs' curves averaged epoch by epoch, as the authors' autotrain.py reports. "
        "Step time in ms, mean over seeds of the training time per step (wall time / steps, "
        f"including validation and tracing, when history.csv has no {TRAIN_TIME_COLUMN}).", "",
        "| method | seeds | epochs | last val accuracy | mean of per-run bests "
        "| best of the mean curve (epoch) | step time (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['method']} | {r['seeds']} | {r['epochs']} "
              f"| {_percent(r['last_val_accuracy_mean'], r['last_val_accuracy_std'])} "
              f"| {_percent(r['best_val_accuracy_mean'], r['best_val_accuracy_std'])} "
              f"| {100 * r['mean_curve_best_val_accuracy']:.2f} ({r['mean_curve_best_epoch']}) "
              f"| {1000 * r['step_time_s']:.1f} |" for r in rows]
    for method, table in exits.items():
        full = table[-1]["flops"]
        lines += ["", f"## {method}: every exit (last checkpoint)", "",
                  "| exit | FLOPs (M) | FLOPs / full | val accuracy |", "|---|---|---|---|"]
        lines += [f"| {'full' if e is table[-1] else e['exit']} | {e['flops'] / 1e6:.2f} "
                  f"| {e['flops'] / full:.2f} | {_percent(*e['val_accuracy'])} |" for e in table]
    return "\n".join(lines) + "\n"


def plot_val_accuracy(path, results):
    """One line per method: validation accuracy per epoch, mean over seeds (band: ± std),
    its best point circled (the "best of the mean curve")."""
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for method, runs in results.items():
        curves = np.asarray([r["val_accuracy"] for r in runs], dtype=float) * 100
        epochs = np.arange(1, curves.shape[1] + 1)
        mean = mean_curve(runs) * 100
        best = int(mean.argmax())
        label = f"{method} (best of mean curve {mean[best]:.2f}, epoch {best + 1})"
        (line,) = axes.plot(epochs, mean, marker="o" if len(epochs) < 20 else None, label=label)
        axes.plot(epochs[best], mean[best], marker="o", markersize=12, fillstyle="none",
                  color=line.get_color())
        if len(runs) > 1:
            spread = curves.std(axis=0, ddof=1)
            axes.fill_between(epochs, mean - spread, mean + spread, color=line.get_color(),
                              alpha=0.15)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (%), mean over seeds")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    files.write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=100),
                           binary=True)
