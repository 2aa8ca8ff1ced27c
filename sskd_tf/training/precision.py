"""Mixed precision (`--mixed_precision`): the Keras dtype policy of the networks.

The student and a teacher built here compute in float16 or bfloat16 with float32
variables; the Distiller casts their outputs to float32, so the cross-entropy, the
distillation losses and every decomposition run in float32. Under float16 the
Distiller scales the losses dynamically (`Distiller.loss_scale`) and removes the
scale from the gradients before the clip rule compares their norms.

Importing this module does not import Keras (the flags and RunConfig read its names).
"""
import contextlib

# "none": float32 throughout (the --mixed_precision value, not a distillation method).
FULL_PRECISION = "none"
PRECISIONS = (FULL_PRECISION, "mixed_bfloat16", "mixed_float16")


@contextlib.contextmanager
def dtype_policy(precision):
    """Build the networks created in this block under `precision` (one of PRECISIONS);
    the previous global policy is restored afterwards, so the Distiller and the method's
    own layers stay float32."""
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"unknown mixed precision {precision!r}; choose one of: "
                         f"{', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if precision == FULL_PRECISION else precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def needs_loss_scale(model):
    """True when `model` computes in float16, whose small gradients underflow unscaled."""
    return model.dtype_policy.compute_dtype == "float16"
