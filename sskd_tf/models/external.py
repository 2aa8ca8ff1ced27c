"""Networks from outside the port: a saved `.keras` model or a `keras.applications`
architecture (`keras:<ApplicationName>`, `keras:<ApplicationName>:imagenet`), given
the {"logits", "features"} face of the built-in networks with taps read by layer name
(`sskd_tf.taps`). The names themselves are parsed TensorFlow-free in `names.py`."""
import difflib

import keras

from sskd_tf import taps as model_taps
from sskd_tf.errors import UserError
from sskd_tf.models.keras_files import check_readable
from sskd_tf.models.names import KERAS_PREFIX


def application_names():
    """The model constructors of keras.applications (ResNet50, MobileNetV2, ...)."""
    return sorted(name for name in dir(keras.applications) if name[:1].isupper())


def load_keras_file(path, num_classes, input_shape, role="model"):
    """A saved model whose input takes `input_shape` and whose output has `num_classes`;
    `role` (teacher, student) names its flag in errors."""
    check_readable(path, f"--{role}" if role in ("teacher", "student") else "the model")
    try:
        model = keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as error:
        raise UserError(f"cannot read the model {path!r}: {str(error).splitlines()[0]}") from None
    expected_input = tuple(input_shape)
    found_input = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if found_input is not None and any(f is not None and f != e
                                       for f, e in zip(found_input, expected_input)):
        raise UserError(f"{path} takes {found_input} inputs but the data are {expected_input}; "
                        "pass --image_size or another model")
    output = model.output["logits"] if model_taps.has_taps(model) else model.output
    if output.shape[-1] != num_classes:
        raise UserError(f"{path} predicts {output.shape[-1]} classes but the data have "
                        f"{num_classes}")
    return model


def build_application(spec, num_classes, input_shape):
    """`keras:Name` with random weights, or `keras:Name:imagenet` with ImageNet weights
    under a new `num_classes` head named "logits"; logits out (no softmax)."""
    name, _, weights = spec[len(KERAS_PREFIX):].partition(":")
    if name not in application_names():
        near = difflib.get_close_matches(name, application_names(), n=3, cutoff=0.5)
        raise UserError(f"keras.applications has no model {name!r}"
                        + (f"; closest: {', '.join(near)}" if near else
                           f"; choose one of: {', '.join(application_names())}"))
    constructor = getattr(keras.applications, name)
    try:
        if not weights:
            return constructor(weights=None, input_shape=tuple(input_shape), classes=num_classes,
                               classifier_activation=None)
        base = constructor(weights=weights, include_top=False, input_shape=tuple(input_shape),
                           pooling="avg")
    except ValueError as error:
        raise UserError(f"{spec}: {str(error).splitlines()[0]}") from None
    except Exception as error:  # the download of the weights: network or server errors
        raise UserError(f"{spec}: could not fetch the {weights} weights ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else 'no detail'}); "
                        f"use keras:{name} for random weights") from None
    logits = keras.layers.Dense(num_classes, name="logits")(base.output)
    return keras.Model(base.input, logits, name=name.lower())


def build(spec, num_classes, input_shape, taps=(), role="model"):
    """The network `spec` (a `.keras` path or `keras:...`) with the taps `taps`."""
    if spec.startswith(KERAS_PREFIX):
        model = build_application(spec, num_classes, input_shape)
    else:
        model = load_keras_file(spec, num_classes, input_shape, role)
    return model_taps.tap_model(model, taps, role) if taps or not model_taps.has_taps(model) \
        else model
