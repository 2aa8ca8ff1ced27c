"""`--mode=export`: convert the student of the finished run in --train_dir (default: the
directory `--mode=train` derives from the same flags) to LiteRT float32, float16 and int8,
evaluate each and write train_dir/export/ (sskd_tf.export)."""
import os

from sskd_tf.export import ExportOptions, export_run
from sskd_tf.export.exporter import EXPORT_DIR
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.training.run import with_train_dir


def export_options(flag_values):
    return ExportOptions(
        representative_samples=flag_values.representative_samples,
        latency_runs=flag_values.latency_runs,
        int8_max_accuracy_drop=flag_values.int8_max_accuracy_drop,
        threads=flag_values.export_threads,
        data_dir=flag_values.data_dir)


def export(train_dir, flag_values):
    """Export the run in train_dir and print its report."""
    export_run(train_dir, export_options(flag_values))
    with open(os.path.join(train_dir, EXPORT_DIR, "report.md")) as handle:
        print(handle.read(), flush=True)


def run(flag_values):
    train_dir = flag_values.train_dir or with_train_dir(
        config_from_flags(flag_values).resolved()).train_dir
    export(train_dir, flag_values)
