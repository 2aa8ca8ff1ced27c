"""`--mode=teacher`: train the teacher network alone, by the same recipe."""
from sskd_tf.distill.names import BASELINE
from sskd_tf.modes.export import export
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.training.run import train, with_train_dir


def run(flag_values):
    config = with_train_dir(config_from_flags(
        flag_values, method=BASELINE, student=flag_values.teacher, method_options={}).resolved())
    train(config)
    if flag_values.export:
        export(config.train_dir, flag_values)
