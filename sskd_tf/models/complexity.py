"""FLOPs and parameter counts, counted as in the paper's table."""
import math

import keras


def _multiply_adds(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        height, width, channels = layer.output.shape[1:]
        return height * width * channels * math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.Conv2D):
        height, width, filters = layer.output.shape[1:]
        inputs_per_group = layer.input.shape[-1] // layer.groups
        return height * width * filters * inputs_per_group * math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(layer.input.shape[1:-1])
        return positions * layer.input.shape[-1] * layer.units
    return 0


def count_flops(model):
    """FLOPs of one image: 2 x the multiply-adds of the Conv2D, DepthwiseConv2D and
    Dense layers (biases, normalisation, activations and pooling are not counted)."""
    return 2 * sum(_multiply_adds(layer) for layer in model.layers)


def count_params(model, include_non_trainable=False):
    """Number of trainable parameters (what the paper reports); with
    include_non_trainable, the batch-norm moving statistics are added."""
    weights = model.weights if include_non_trainable else model.trainable_weights
    return sum(math.prod(weight.shape) for weight in weights)
