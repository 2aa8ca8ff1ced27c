"""RunConfig from the parsed flags, shared by the modes that train."""
from sskd_tf.distill.catalog import catalog, parse_method_options
from sskd_tf.training.config import RunConfig
from sskd_tf.training.recipes import decay_points

# RunConfig fields that take the flag of the same name as it is.
_SAME_NAME_FIELDS = (
    "teacher", "dataset", "data_dir", "image_size", "validation_split", "recipe", "epochs",
    "batch_size", "learning_rate",
    "lr_decay_rate", "weight_decay", "train_dir", "teacher_weights", "seed", "strategy", "jit",
    "mixed_precision", "deterministic", "max_consecutive_skips", "overwrite", "take_train",
    "take_test", "optimizer", "keras_batch_norm", "sync_batch_norm",
)


def method_options(flag_values, method):
    """--method_options, plus each command-line option of `method` (its module's
    COMMAND_LINE_OPTIONS, see distill/catalog.py) that --method_options leaves unset."""
    options = parse_method_options(flag_values.method_options)
    for option in catalog().options_of(method):
        options.setdefault(option.option, getattr(flag_values, option.flag))
    return options


def config_from_flags(flag_values, **overrides):
    """The RunConfig of main.py's flags; `overrides` replace fields."""
    fields = {name: getattr(flag_values, name) for name in _SAME_NAME_FIELDS}
    fields.update(
        student=flag_values.student or None,
        teacher_taps=tuple(flag_values.teacher_taps),
        student_taps=tuple(flag_values.student_taps),
        method=flag_values.method,
        method_options=method_options(flag_values, flag_values.method),
        lr_decay_points=decay_points(flag_values.lr_decay_points),
        download=not flag_values.no_download,
    )
    fields.update(overrides)
    return RunConfig(**fields)
