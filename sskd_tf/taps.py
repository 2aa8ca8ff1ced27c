"""Distillation taps of any functional or sequential Keras model, read by layer name.

Every distillation method reads a network as `{"logits": output, "features": [maps]}`
(docs/architecture.md). The built-in networks return that dict themselves;
`tap_model` gives any other model the same face, sharing its layers (training the
tap model trains the model).
"""
import difflib

import keras

from sskd_tf.errors import UserError


def has_taps(model):
    """True for a model whose output already is the {"logits", "features"} dict."""
    output = getattr(model, "output", None) if getattr(model, "inputs", None) else None
    return isinstance(output, dict) and {"logits", "features"} <= set(output)


def find_layer(model, name, role="model"):
    """The layer `name` of `model`; a UserError naming the closest layer names when
    there is none."""
    names = [layer.name for layer in model.layers]
    if name in names:
        return model.get_layer(name)
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(near)}" if near else f"it has {len(names)} layers, e.g. {', '.join(names[:5])}"
    raise UserError(f"the {role} {model.name!r} has no layer {name!r}; {hint}")


class OutputsOnly(keras.Model):
    """Any model (subclassed ones included) as {"logits": its output, "features": []}:
    the face of a network whose layers no loss reads."""

    def __init__(self, model, **kwargs):
        super().__init__(name=f"{model.name}_outputs", **kwargs)
        self.model = model

    def call(self, images, training=False):
        return {"logits": self.model(images, training=training), "features": []}


def tap_model(model, layer_names=(), role="model", name=None):
    """A model from `model`'s inputs to {"logits": its output, "features": [the outputs
    of `layer_names`, in order]}, sharing `model`'s layers. A model that already
    returns that dict keeps its logits and its own features, the named layers'
    outputs following them. A subclassed model without `layer_names` is wrapped as
    `OutputsOnly`."""
    if not getattr(model, "inputs", None):
        if not layer_names:
            return OutputsOnly(model)
        raise UserError(f"the {role} {model.name!r} is a subclassed model: taps read layer "
                        "outputs by name, which needs a functional or sequential model")
    layer_names = list(layer_names)
    own_features = []
    if has_taps(model):
        if not layer_names:
            return model
        logits, own_features = model.output["logits"], list(model.output["features"])
    elif isinstance(model.output, (list, tuple, dict)):
        raise UserError(f"the {role} {model.name!r} has several outputs; give it one output, "
                        "the class scores")
    else:
        logits = model.output
    features = own_features + [_single_output(find_layer(model, name, role), role)
                               for name in layer_names]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, {"logits": logits, "features": features},
                       name=name or f"{model.name}_taps")


def _single_output(layer, role):
    if isinstance(layer.output, (list, tuple, dict)):
        raise UserError(f"the {role}'s layer {layer.name!r} has several outputs; tap a layer "
                        "with one output")
    return layer.output
