"""`--mode=compare` flags: which methods, how many seeds."""
from absl import flags

from sskd_tf.distill.names import METHOD_NAMES
from sskd_tf.limits import INT32_MAX, SEED_MAX

flags.DEFINE_list("methods", list(METHOD_NAMES),
                  "--mode=compare: the methods to train with the same teacher and seeds, "
                  f"each once (default: all, {','.join(METHOD_NAMES)}).")
flags.DEFINE_integer("seeds", 3, "--mode=compare: seeds per method (--seed, --seed+1, ..., "
                     f"up to {SEED_MAX}).", lower_bound=1, upper_bound=INT32_MAX)


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
flags.register_multi_flags_validator(
    ["mode", "seed", "seeds"],
    lambda values: values["mode"] != "compare" or values["seed"] + values["seeds"] - 1 <= SEED_MAX,
    message=f"--mode=compare: the last seed, --seed + --seeds - 1, must not exceed {SEED_MAX}")
