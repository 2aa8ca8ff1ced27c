"""`--mode=compare` flags: which methods, how many seeds."""
from absl import flags

from sskd_tf.distill.names import METHOD_NAMES

flags.DEFINE_list("methods", list(METHOD_NAMES),
                  "--mode=compare: the methods to train with the same teacher and seeds "
                  f"(default: all, {','.join(METHOD_NAMES)}).")
flags.DEFINE_integer("seeds", 3, "--mode=compare: seeds per method (--seed, --seed+1, ...).",
                     lower_bound=1)


def _valid_methods(names):
    unknown = [name for name in names if name not in METHOD_NAMES]
    if unknown:
        raise flags.ValidationError(
            f"unknown method {', '.join(unknown)}; choose from: {', '.join(METHOD_NAMES)}")
    if not names:
        raise flags.ValidationError("name at least one method")
    if len(set(names)) != len(names):
        raise flags.ValidationError(f"a method is listed twice: {','.join(names)}")
    return True


flags.register_validator("methods", _valid_methods)
