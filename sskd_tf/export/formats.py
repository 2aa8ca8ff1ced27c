"""The LiteRT (TFLite) formats a student is exported to (FORMATS: name -> converter settings) and
their conversion with the TFLiteConverter of the installed TensorFlow.

float32: the network as it is. float16: weights stored as float16 (half the size),
computed in float32 on a CPU. int8: full-integer post-training quantisation, int8
weights, activations, input and output; activation ranges come from a representative
set of training images.
"""
import numpy as np
import tensorflow as tf

from sskd_tf.errors import UserError


def _float32(converter, representative_images):
    del converter, representative_images


def _float16(converter, representative_images):
    del representative_images
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _int8(converter, representative_images):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in representative_images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


OPS_PAGE = "https://ai.google.dev/edge/litert/models/ops_compatibility"

# Each format's converter settings, in the order of the report.
FORMATS = {"float32": _float32, "float16": _float16, "int8": _int8}


def convert(saved_model_dir, format_name, representative_images=None):
    """The .tflite bytes of the SavedModel in `saved_model_dir` in format `format_name`.
    representative_images: float32 [N, H, W, C] model inputs (int8 only). A model with an
    op that LiteRT's builtin ops cannot express is a UserError naming the op(s)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if representative_images is not None:
        representative_images = np.asarray(representative_images, np.float32)
    FORMATS[format_name](converter, representative_images)
    try:
        return converter.convert()
    except Exception as error:  # ConverterError, which TF does not export; others re-raised
        unsupported = _unsupported_ops(error)
        if not unsupported:
            raise
        raise UserError(f"the model cannot be converted to LiteRT {format_name}: "
                        f"{'; '.join(unsupported)} (not a LiteRT builtin op); replace it with "
                        f"supported ops, see {OPS_PAGE}") from None


def _unsupported_ops(error):
    """'op tf.Svd in layer .../svd_1' for each op the converter reported in `error` as
    needing a custom or a Flex (select TF) op."""
    found = []
    for data in getattr(error, "errors", []):
        codes = data.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_number
        name = data.operator.name
        if not name or not codes[data.error_code].name.startswith("ERROR_NEEDS_"):
            continue
        calls = [call.name for call in data.location.call]
        layer = calls[0].split("@")[0].rsplit("/", 1)[0] if calls else ""
        found.append(f"op {name}" + (f" in layer {layer}" if layer else ""))
    return list(dict.fromkeys(found))
