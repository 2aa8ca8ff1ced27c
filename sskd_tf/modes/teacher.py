"""`--mode=teacher`: train the teacher network alone, by the same recipe."""
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.training.run import train


def run(flag_values):
    train(config_from_flags(flag_values, method="none", student=flag_values.teacher,
                            method_options={}))
