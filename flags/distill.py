"""Distillation flags: the method and its options.

`--method` and each method's own flags (e.g. KD-SVD's `--svd_backend`) come from
the method modules' declarations (sskd_tf/distill/catalog.py), so a new method
module brings its flags with it.
"""
from absl import flags

from sskd_tf.distill.catalog import catalog, parse_method_options
from sskd_tf.distill.names import BASELINE, DEFAULT_METHOD, METHOD_NAMES

flags.DEFINE_enum("method", DEFAULT_METHOD, METHOD_NAMES,
                  f"Distillation method; {BASELINE} trains the student alone.")


def _define(option):
    """The absl flag of one catalog.CommandLineOption (a method option declared with
    `flag=`)."""
    help_text = f"{option.help} (methods: {', '.join(option.methods)})"
    if option.choices is not None:
        flags.DEFINE_enum(option.flag, option.default, option.choices, help_text)
    elif isinstance(option.default, bool):
        flags.DEFINE_bool(option.flag, option.default, help_text)
    elif isinstance(option.default, int):
        flags.DEFINE_integer(option.flag, option.default, help_text)
    elif isinstance(option.default, float):
        flags.DEFINE_float(option.flag, option.default, help_text)
    else:
        flags.DEFINE_string(option.flag, option.default, help_text)


for _option in catalog().options:
    _define(_option)

flags.DEFINE_list("method_options", [],
                  "Method options as name=value pairs, e.g. weight=2,clip_scale=0.5 (each "
                  "method's options: docs/methods.md; `--mode=tune` writes them).")


def _valid_options(items):
    try:
        parse_method_options(items)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return True


flags.register_validator("method_options", _valid_options)
