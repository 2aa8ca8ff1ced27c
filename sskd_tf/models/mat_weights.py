"""Read and write the authors' `.mat` weight files (scipy `savemat` of {name: array}).

Layouts:
- "resnet": `train_w_distill.py` of sseung0703/KD_methods_with_TF saves the variables of
  the trained scope under their TF1 names, e.g. `Teacher/conv0/weights`,
  `Teacher/Resblock0/BasicBlock0/conv2/weights` (the shortcut), `Teacher/bn0/moving_mean`,
  `Teacher/full/biases`; `loadmat` returns 1-D variables as [1, C]. Loading accepts any
  single top scope (`Teacher`, `Student`); saving writes `Teacher`.
- "wrn": `train_w_distillation.py` of sseung0703/Knowledge_distillation_via_TF2.0 saves
  every variable under its TF2 name without the model scope but with the `:0`, e.g.
  `conv/kernel:0`, `BasicBlock1.0/bn/moving_var:0`, `bn_last/gamma:0`, `fc/biases:0`
  (layer names of its `nets/WResNet.py`); its `nets/tcl.py` layers store BN vectors as
  [1, 1, 1, C] and the dense bias as [1, C], and so does `save_mat_weights`.

Any mismatch between a file and the model (missing or extra names, shapes, values
that are not real numbers) raises a UserError naming the first few, and nothing is
assigned.
"""
import dataclasses
import re
from typing import Callable, Mapping

import keras
import numpy as np
import scipy.io

from sskd_tf.errors import UserError
from sskd_tf.registry import Registry

_FIRST_FEW = 3
_BLOCK_LAYER = re.compile(r"stage(?P<stage>\d+)_block(?P<block>\d+)_(?P<layer>\w+)")


@dataclasses.dataclass(frozen=True)
class MatLayout:
    """How the variables of one family are named and shaped in the authors' files.

    scope: Keras layer name -> the authors' scope of that layer.
    variable_names: Keras weight name -> the authors' variable name (same if absent).
    suffix: appended to every name.
    top_scope: the model scope the names start with, '' if the file has none.
    stored_shape: (layer, weight) -> the shape the authors' variable has.
    """

    scope: Callable[[str], str]
    variable_names: Mapping[str, str]
    suffix: str
    top_scope: str
    stored_shape: Callable[[keras.layers.Layer, keras.Variable], tuple]


def _block_scope(layer_name, fixed, block_format, block_layers):
    """Map `stage{i}_block{j}_{layer}` with `block_format` and `block_layers`, and the
    other layers with `fixed`; unknown layers keep their Keras name, so that loading
    into another family reports them as missing."""
    if layer_name in fixed:
        return fixed[layer_name]
    match = _BLOCK_LAYER.fullmatch(layer_name)
    if match is None or match["layer"] not in block_layers:
        return layer_name
    block_scope = block_format.format(stage=match["stage"], block=match["block"])
    return f"{block_scope}/{block_layers[match['layer']]}"


def _resnet_scope(layer_name):
    return _block_scope(
        layer_name,
        fixed={"stem_conv": "conv0", "stem_bn": "bn0", "logits": "full"},
        block_format="Resblock{stage}/BasicBlock{block}",
        block_layers={"conv0": "conv0", "bn0": "bn0", "conv1": "conv1", "bn1": "bn1",
                      "shortcut_conv": "conv2", "shortcut_bn": "bn2"})


def _wrn_scope(layer_name):
    return _block_scope(
        layer_name,
        fixed={"stem_conv": "conv", "final_bn": "bn_last", "logits": "fc"},
        block_format="BasicBlock{stage}.{block}",
        block_layers={"bn": "bn", "conv0": "conv0", "bn0": "bn0", "conv1": "conv1",
                      "shortcut_conv": "conv2"})


def _keras_shape(layer, weight):
    return tuple(weight.shape)


def _tcl_shape(layer, weight):
    if isinstance(layer, keras.layers.BatchNormalization):
        return (1, 1, 1, *weight.shape)
    if isinstance(layer, keras.layers.Dense) and weight.name == "bias":
        return (1, *weight.shape)
    return tuple(weight.shape)


LAYOUTS = Registry("mat layout")
LAYOUTS.register("resnet", MatLayout(
    scope=_resnet_scope, variable_names={"kernel": "weights", "bias": "biases"},
    suffix="", top_scope="Teacher", stored_shape=_keras_shape))
LAYOUTS.register("wrn", MatLayout(
    scope=_wrn_scope, variable_names={"bias": "biases", "moving_variance": "moving_var"},
    suffix=":0", top_scope="", stored_shape=_tcl_shape))


def _model_entries(model, layout):
    """{name in the file: (weight, stored shape)} for every weight of `model`."""
    entries = {}
    for layer in model.layers:
        for weight in layer.weights:
            variable = layout.variable_names.get(weight.name, weight.name)
            name = f"{layout.scope(layer.name)}/{variable}{layout.suffix}"
            entries[name] = (weight, layout.stored_shape(layer, weight))
    return entries


def _one_line(text):
    return " ".join(str(text).split())


def _read_arrays(path):
    try:
        contents = scipy.io.loadmat(path, appendmat=False)
    except FileNotFoundError:
        raise UserError(f"no .mat file at {path}") from None
    except Exception as error:  # scipy signals a damaged file with many exception types
        raise UserError(
            f"cannot read {path} as a .mat file: {_one_line(error) or type(error).__name__}"
        ) from None
    return {name: value for name, value in contents.items() if not name.startswith("__")}


def _strip_top_scope(arrays):
    """Remove the model scope (e.g. `Teacher/`) when every name starts with the same one."""
    top_scopes = {name.split("/", 1)[0] for name in arrays if "/" in name}
    if len(top_scopes) != 1 or not all("/" in name for name in arrays):
        return arrays
    return {name.split("/", 1)[1]: value for name, value in arrays.items()}


def _without_ones(shape):
    return tuple(size for size in shape if size != 1)


def _first_few(items):
    shown = ", ".join(items[:_FIRST_FEW])
    return shown + (f" (+{len(items) - _FIRST_FEW} more)" if len(items) > _FIRST_FEW else "")


def _mismatches(arrays, entries):
    missing = sorted(entries.keys() - arrays.keys())
    unexpected = sorted(arrays.keys() - entries.keys())
    misshapen = [
        f"{name} is {tuple(arrays[name].shape)} instead of {entries[name][1]}"
        for name in sorted(entries.keys() & arrays.keys())
        if _without_ones(arrays[name].shape) != _without_ones(entries[name][1])
    ]
    not_numbers = [f"{name} is {arrays[name].dtype}" for name in sorted(entries.keys() & arrays.keys())
                   if not _real_numbers(arrays[name])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_first_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: {_first_few(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} with another shape: {_first_few(misshapen)}")
    if not_numbers:
        problems.append(f"{len(not_numbers)} not real numbers: {_first_few(not_numbers)}")
    return problems


def _real_numbers(array):
    return np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)


def load_mat_weights(model, path, layout):
    """Assign the weights stored in the authors' .mat file `path` to `model`.

    layout: "resnet" (KD_methods_with_TF, e.g. a resnet32 teacher) or "wrn"
    (Knowledge_distillation_via_TF2.0, e.g. WRN404.mat into wrn40_4).
    """
    mat_layout = LAYOUTS.get(layout)
    arrays = _read_arrays(path)
    if mat_layout.top_scope:
        arrays = _strip_top_scope(arrays)
    entries = _model_entries(model, mat_layout)
    problems = _mismatches(arrays, entries)
    if problems:
        raise UserError(f"{path} does not fit model {model.name} (layout {layout!r}): "
                         + "; ".join(problems))
    for name, (weight, _) in entries.items():
        weight.assign(np.reshape(arrays[name], weight.shape).astype(weight.dtype))


def save_mat_weights(model, path, layout):
    """Write the weights of `model` to `path` in the authors' names and shapes."""
    mat_layout = LAYOUTS.get(layout)
    prefix = f"{mat_layout.top_scope}/" if mat_layout.top_scope else ""
    arrays = {
        prefix + name: np.reshape(keras.ops.convert_to_numpy(weight), stored_shape)
        for name, (weight, stored_shape) in _model_entries(model, mat_layout).items()
    }
    scipy.io.savemat(path, arrays)
