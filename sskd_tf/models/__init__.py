"""The authors' networks as Keras models with distillation taps.

`build_model(name, num_classes)` returns a functional `keras.Model` whose output is
`{"logits": [B, classes], "features": [tap0, tap1, ...]}`; the taps are the feature
maps the distillation methods compare (see each family's module).

Importing this package does not import TensorFlow (the flags validate model names
through it); the functions that need Keras load their module on first use.
"""
import importlib

from sskd_tf.models.names import MODELS, is_external, is_model_name, parse_model_name, student_for

__all__ = ["MODELS", "build_model", "count_flops", "count_params", "is_external", "is_model_name",
           "logits_model", "parse_model_name", "student_for"]

_LAZY_ATTRIBUTES = {
    "count_flops": "sskd_tf.models.complexity",
    "count_params": "sskd_tf.models.complexity",
    "logits_model": "sskd_tf.models.common",
}


def build_model(name, num_classes, input_shape=(32, 32, 3), weight_decay=0.0, taps=(),
                role="model", keras_batch_norm=False):
    """Build the network `name` (e.g. `resnet32`, `wrn16_4`, `vgg_teacher`, RepDistiller's
    `crd:resnet8x4`, a `.keras` file, `keras:ResNet50`).

    weight_decay > 0 attaches `keras.regularizers.L2(weight_decay / 2)` to the variables
    the authors decay for that family, so that `sum(model.losses)` equals their
    `weight_decay * sum(w ** 2) / 2`; 0 attaches none. Networks from outside the port
    keep their own regularisers. taps: layer names whose outputs replace the
    network's own distillation taps (required for outside networks, which have none).
    Each family's `BATCH_NORM` is the BN layer of the authors' code (ResNet, MobileNet,
    ResNeXt: slim's, with a Bessel-corrected moving variance; WRN: Keras'; RepDistiller's
    `crd:` networks: PyTorch's, which is slim's); with
    keras_batch_norm every BN layer is Keras' own (biased moving variance).
    """
    if is_external(name):
        return importlib.import_module("sskd_tf.models.external").build(
            name, num_classes, input_shape, taps, role)
    module, arguments = parse_model_name(name)
    family = importlib.import_module(f"sskd_tf.models.{module}")
    if keras_batch_norm and family.BATCH_NORM is not None:
        arguments["batch_norm"] = importlib.import_module("keras").layers.BatchNormalization
    # TensorFlow's name scopes refuse ':' (crd:resnet8x4 -> crd_resnet8x4).
    model_name = name.replace(":", "_")
    model = family.build(name=model_name, num_classes=num_classes, input_shape=tuple(input_shape),
                         weight_decay=weight_decay, **arguments)
    if not taps:
        return model
    tap_model = importlib.import_module("sskd_tf.taps").tap_model
    return tap_model(__getattr__("logits_model")(model), taps, role, name=model_name)


def __getattr__(attribute):
    module = _LAZY_ATTRIBUTES.get(attribute)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    return getattr(importlib.import_module(module), attribute)
