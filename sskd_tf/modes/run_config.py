"""RunConfig from the parsed flags, shared by the modes that train, and back: the flags of
a RunConfig (`flag_lines`, e.g. the flagfile of a search's best trial)."""
import dataclasses

from sskd_tf.distill.catalog import catalog, parse_method_options
from sskd_tf.training.config import RunConfig
from sskd_tf.training.recipes import decay_points

# RunConfig fields that take the flag of the same name as it is.
_SAME_NAME_FIELDS = (
    "teacher", "dataset", "data_dir", "image_size", "validation_split", "recipe", "epoch_cut",
    "epochs", "batch_size", "learning_rate",
    "lr_decay_rate", "weight_decay", "train_dir", "teacher_weights", "seed", "strategy", "jit",
    "mixed_precision", "deterministic", "max_consecutive_skips", "overwrite", "take_train",
    "take_test", "optimizer", "keras_batch_norm", "sync_batch_norm",
)
# RunConfig fields set from flags of another form (see config_from_flags), and those no
# flag sets (verbose follows absl's own --verbosity).
_OTHER_FIELDS = ("student", "teacher_taps", "student_taps", "method", "method_options",
                 "lr_decay_points", "download")
_NOT_FLAGS = ("verbose",)


def method_options(flag_values, method):
    """--method_options, plus each command-line option of `method` (its module's
    COMMAND_LINE_OPTIONS, see distill/catalog.py) that --method_options leaves unset."""
    options = parse_method_options(flag_values.method_options)
    for option in catalog().flags_of(method):
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


def _flag(name, value):
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (tuple, list)):
        value = ",".join(str(item) for item in value)
    return f"--{name}={value}"


def _option_item(name, value):
    """`name=value` that --method_options reads back as `value`: bare where it parses so,
    else as a Python literal."""
    read = parse_method_options([f"{name}={value}"])[name]
    bare = type(read) is type(value) and read == value
    return f"{name}={value}" if bare else f"{name}={value!r}"


def flag_lines(config):
    """main.py flags (one `--flag=value` each) that `config_from_flags` turns back into
    `config`, every field given (None ones left to their flags' defaults); not
    `--overwrite`, which a flagfile should not carry."""
    values = {name: getattr(config, name) for name in _SAME_NAME_FIELDS if name != "overwrite"}
    options = dict(config.method_options)
    values.update(method=config.method, student=config.student,
                  teacher_taps=list(config.teacher_taps), student_taps=list(config.student_taps),
                  lr_decay_points=None if config.lr_decay_points is None else [
                      repr(float(point)) for point in config.lr_decay_points],
                  no_download=not config.download)
    for option in catalog().flags_of(config.method):
        if option.option in options:
            values[option.flag] = options.pop(option.option)
    values["method_options"] = [_option_item(name, value) for name, value in options.items()]
    return [_flag(name, value) for name, value in values.items()
            if value is not None and value != []]


def check_fields_are_flags():
    """Every RunConfig field is set by a flag here, or said to be set by none (for tests)."""
    covered = set(_SAME_NAME_FIELDS) | set(_OTHER_FIELDS) | set(_NOT_FLAGS)
    return sorted({field.name for field in dataclasses.fields(RunConfig)} - covered)
