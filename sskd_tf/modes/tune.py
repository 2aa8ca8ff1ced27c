"""`--mode=tune`: search the distillation method's options with keras-tuner
(see docs/tuning.md and sskd_tf/tuning.py)."""
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.tuning import search


def run(flag_values):
    search(config_from_flags(flag_values), tuner=flag_values.tuner,
           max_trials=flag_values.max_trials, epochs=flag_values.tune_epochs)
