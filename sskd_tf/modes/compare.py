"""`--mode=compare`: train several distillation methods with one teacher and the
same seeds, then tabulate and plot them (the report: sskd_tf/compare_report.py).

Layout under --train_dir:
  teacher/                    the shared teacher, trained once (unless --teacher_weights)
  compare/<method>/seed<k>/   one normal run per method and seed (see training/run.py)
  compare/results.md          the tables (with the self_distill exits, when compared)
  compare/results.csv         one row per method
  compare/val_accuracy.png    validation accuracy per epoch, mean over seeds, with the best
                              epoch of that mean curve marked

A run whose results.json exists is reused, so an interrupted comparison resumes.
"""
import dataclasses
import json
import os

from sskd_tf import compare_report as report
from sskd_tf.distill import METHODS, build_method
from sskd_tf.errors import UserError
from sskd_tf.modes.run_config import config_from_flags, method_options
from sskd_tf.training.config import RESULTS_FILE
from sskd_tf.training.run import teacher_weights_path, train

COMPARE_DIR = "compare"
CHECKED_FIELDS = ("method", "student", "dataset", "recipe", "seed", "epochs")


def run(flag_values):
    base = config_from_flags(flag_values, method_options={})
    options = {name: method_options(flag_values, name) for name in flag_values.methods}
    compare(base, flag_values.methods, flag_values.seeds, options)


def compare(base, methods, seeds, options=None):
    """Train `methods` x `seeds` seeds (base.seed, base.seed + 1, ...) like `base`, with
    one teacher, reusing finished runs; write (and, verbose, print) the results and return
    the summary rows.
    options: {method: method_options}; a method missing from it takes base.method_options."""
    root = os.path.join(base.train_dir, COMPARE_DIR)
    configs = {method: [run_config(base, root, method, seed, (options or {}).get(method))
                        for seed in range(base.seed, base.seed + seeds)] for method in methods}
    finished = {method: [_finished(c, _init_epochs(c)) for c in runs]
                for method, runs in configs.items()}
    if any(METHODS.get(method).needs_teacher and None in finished[method] for method in methods):
        teacher = teacher_weights_path(base)
        configs = {method: [dataclasses.replace(c, teacher_weights=teacher) for c in runs]
                   for method, runs in configs.items()}
    results = {method: [done or train(c) for c, done in zip(runs, finished[method])]
               for method, runs in configs.items()}
    rows = [report.summary_row(method, configs[method], results[method]) for method in methods]
    exits = {method: report.exit_summary([report.evaluate_exits(c) for c in configs[method]])
             for method in methods if hasattr(METHODS.get(method), "exit_logits")}
    report.write_outputs(root, base, rows, results, exits)
    if base.verbose:
        print(f"\n{report.markdown(base, rows, results, exits)}", end="", flush=True)
    return rows


def run_config(base, root, method, seed, options=None):
    """The config of one run: `base` with the method, its options and the seed, in
    root/<method>/seed<seed>."""
    return dataclasses.replace(
        base, method=method, seed=seed, train_dir=os.path.join(root, method, f"seed{seed}"),
        method_options=base.method_options if options is None else options)


def _init_epochs(config):
    """The method's init_epochs; fails before any training if its options do not fit it."""
    try:
        return build_method(config.method, **config.method_options).init_epochs
    except (TypeError, ValueError) as error:
        raise UserError(f"--method_options do not fit {config.method}: {error}") from None


def _finished(config, init_epochs):
    """The results of the finished run in config.train_dir, else None (also with
    --overwrite). A finished run of other settings is an error."""
    path = os.path.join(config.train_dir, RESULTS_FILE)
    if not os.path.exists(path) or config.overwrite:
        return None
    with open(path) as handle:
        results = json.load(handle)
    resolved = config.resolved()
    expected = dict(vars(resolved), epochs=resolved.epochs + init_epochs)
    stale = [f"{name} {results[name]} (not {expected[name]})" for name in CHECKED_FIELDS
             if results[name] != expected[name]]
    if stale:
        raise UserError(f"{config.train_dir} holds a finished run with {', '.join(stale)}; "
                         "pass --overwrite to retrain it or choose another --train_dir")
    if config.verbose:
        print(f"Reusing the finished run in {config.train_dir}", flush=True)
    return results
