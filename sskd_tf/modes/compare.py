"""`--mode=compare`: train several distillation methods with one teacher and the
same seeds, then tabulate and plot them (the report: sskd_tf/compare_report.py).

Layout under --train_dir (default: runs/compare-<student>-<dataset>-<fingerprint of the
settings the runs share>):
  teacher/                    the shared teacher, trained once (unless --teacher_weights)
  compare/<method>/seed<k>/   one normal run per method and seed (see training/run.py)
  compare/results.md          the tables (with the self_distill exits, when compared)
  compare/results.csv         one row per method
  compare/val_accuracy.png    validation accuracy per epoch, mean over seeds, with the best
                              epoch of that mean curve marked

A finished run of the same settings (its run.json) is reused, so an interrupted comparison
resumes and a comparison with more methods or seeds trains only the new runs; a finished
run of other settings is refused (--overwrite retrains it).
"""
import dataclasses
import os

from sskd_tf import compare_report as report
from sskd_tf.distill import METHODS, build_method
from sskd_tf.distill.names import BASELINE
from sskd_tf.errors import UserError
from sskd_tf.distill.catalog import catalog, parse_method_options
from sskd_tf.modes.run_config import config_from_flags, method_options
from sskd_tf.training import files, identity
from sskd_tf.training.config import RESULTS_FILE
from sskd_tf.training.recipes import DEFAULT_RECIPE
from sskd_tf.training.run import (needs_trained_teacher, teacher_identity,
                                  teacher_weights_path, train)

COMPARE_DIR = "compare"


def run(flag_values):
    base = config_from_flags(flag_values, method_options={})
    compare(base, flag_values.methods, flag_values.seeds,
            options_per_method(flag_values, flag_values.methods))


def options_per_method(flag_values, methods):
    """{method: its options}: each `--method_options` entry goes to the compared methods
    that declare that option (an entry none of them declares is a UserError), each method's
    own flags to it."""
    given = parse_method_options(flag_values.method_options)
    declared = {method: {option.name for option in catalog().options_of(method)}
                for method in methods}
    unknown = sorted(set(given) - set().union(*declared.values()))
    if unknown:
        raise UserError(f"--method_options: no method of --methods takes {', '.join(unknown)}")
    return {method: {name: value for name, value in method_options(flag_values, method).items()
                     if name in declared[method]} for method in methods}


def shared_identity(base):
    """What every run of a comparison shares: the settings but the method, its options
    and the seed, and the teacher's weights when they are given."""
    shared = dataclasses.replace(base, method=BASELINE, method_options={})
    digest = identity.file_digest(base.teacher_weights, "--teacher_weights") if base.teacher_weights else None
    return {"runs": identity.run_identity(shared), "teacher_weights": digest}


def compare(base, methods, seeds, options=None):
    """Train `methods` x `seeds` seeds (base.seed, base.seed + 1, ...) like `base`, with
    one teacher, reusing finished runs; write (and, verbose, print) the results and return
    the summary rows.
    options: {method: method_options}; a method missing from it takes base.method_options.
    Every run takes base.recipe, else the default recipe (not a method's own: the runs
    share a teacher and a budget)."""
    base = dataclasses.replace(base, recipe=base.recipe or DEFAULT_RECIPE).resolved()
    if not base.train_dir:
        base = dataclasses.replace(base, train_dir=identity.default_train_dir(
            "compare", (base.student, base.dataset), shared_identity(base)))
    for method in methods:
        _check_options(method, (options or {}).get(method, base.method_options))
    with files.run_lock(base.train_dir):
        return _compare(base, methods, seeds, options or {})


def _compare(base, methods, seeds, options):
    root = os.path.join(base.train_dir, COMPARE_DIR)
    configs = {method: [run_config(base, root, method, seed, options.get(method))
                        for seed in range(base.seed, base.seed + seeds)] for method in methods}
    if any(needs_trained_teacher(method) for method in methods):
        teacher = teacher_weights_path(base)
        configs = {method: [dataclasses.replace(c, teacher_weights=c.teacher_weights or teacher)
                            if needs_trained_teacher(method) else c for c in runs]
                   for method, runs in configs.items()}
    results = {method: [_finished(c) or train(c) for c in runs] for method, runs in configs.items()}
    rows = [report.summary_row(method, configs[method], results[method]) for method in methods]
    exits = {method: report.exit_summary([report.evaluate_exits(c) for c in configs[method]])
             for method in methods if METHODS.get(method).has_exits}
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


def _check_options(method, options):
    """Fail before any training when `options` do not fit `method`."""
    try:
        build_method(method, **options)
    except (TypeError, ValueError) as error:
        raise UserError(f"--method_options do not fit {method}: {error}") from None


def _finished(config):
    """The results of the finished run of the same settings in config.train_dir, else None
    (also with --overwrite, which retrains it). A finished run of other settings is
    refused, naming the first that differ."""
    path = os.path.join(config.train_dir, RESULTS_FILE)
    if not os.path.exists(path) or config.overwrite:
        return None
    resolved = config.resolved()
    if identity.check_identity(config.train_dir, identity.run_identity(
            resolved, teacher_identity(resolved))) is None:
        return None  # no run.json: the run itself refuses the directory
    results = files.read_json(path, "the results of a finished run")
    if config.verbose:
        print(f"Reusing the finished run in {config.train_dir}", flush=True)
    return results
