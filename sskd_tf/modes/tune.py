"""`--mode=tune`: search the distillation method's options with keras-tuner
(see docs/tuning.md and sskd_tf/tuning.py), then write the best trial as a flagfile
of main.py that trains it in full with every setting of the search."""
import os

from sskd_tf.modes.run_config import config_from_flags, flag_lines
from sskd_tf.training import files
from sskd_tf.tuning import OBJECTIVE, best_config, format_best, search

BEST_FLAGS = "best.flags"


def write_best_flags(result):
    """tune/best.flags (atomically): `--mode=train` and the flags of `best_config`."""
    best = result.best
    path = os.path.join(result.tune_dir, BEST_FLAGS)
    lines = [f"# Best trial {best['trial']} of {result.tune_dir}: {OBJECTIVE} "
             f"{best[OBJECTIVE]:.4f}.", f"# Train it in full: python main.py --flagfile={path}",
             "--mode=train"] + flag_lines(best_config(result))
    files.write_text(path, "\n".join(lines) + "\n")
    return path


def run(flag_values):
    result = search(config_from_flags(flag_values), tuner=flag_values.tuner,
                    max_trials=flag_values.max_trials, epochs=flag_values.tune_epochs)
    flagfile = write_best_flags(result)
    completed = sum(row["status"] == "COMPLETED" for row in result.rows)
    print(format_best(result.best, completed, result.tune_dir, flagfile), flush=True)
