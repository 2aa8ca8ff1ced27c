"""PyTorch's layers as RepDistiller's networks use them (HobbitLong/RepDistiller `models/`),
in Keras.

Padding: every convolution there pads kernel_size // 2 zeros on each side. Keras' "same"
pads max((out - 1) stride + k - in, 0) zeros in all, the smaller half before: for a stride-2
3x3 window over an even size, 0 before and 1 after, which moves the sampling grid by one
pixel. A strided window with padding is therefore an explicit `ZeroPadding2D` (named
`<layer>.pad`) and a "valid" window; stride-1 windows are "same", the same zeros.

Initialisers, transcribed from PyTorch (RepDistiller overrides them in some networks; each
module says which it keeps):
- `kaiming_normal_fan_out`: N(0, 2 / (k * k * out_channels)), RepDistiller's
  `kaiming_normal_(mode='fan_out', nonlinearity='relu')` and its `normal_(0, sqrt(2 / n))`
  with n = k * k * out_channels. A depthwise convolution of C channels has out_channels C;
  Keras' own fan_out of its kernel would be k * k.
- `default_uniform(fan_in)`: U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), what `Conv2d` and
  `Linear` draw when nothing overrides them (`kaiming_uniform_(a=sqrt(5))` for the weight,
  the same bound for the bias); fan_in = k * k * in_channels / groups, or the input units.
Not truncated, unlike the authors' variance scaling (`common.variance_scaling`).

BN: `BatchNorm2d(momentum=0.1, eps=1e-5)` normalises with the biased batch variance and
moves running_var towards the unbiased one, m <- (1 - 0.1) m + 0.1 v: that is
`common.SlimBatchNormalization` at Keras momentum 0.9; gamma starts at 1, beta at 0.

Weight decay: `optim.SGD(weight_decay=5e-4)` adds wd * w to the gradient of every parameter
(conv kernels and biases, BN gamma and beta, dense kernel and bias): `common.l2_decay` on
every trainable variable.

Names: a layer is named by the path of its PyTorch module (`layer1.0.conv1`,
`block2.layer.0.bn1`), so that a state_dict's keys name their layers; operations that are no
module there take their block's path and what they are (`layer1.0.add`).
"""
import math

import keras

from sskd_tf.models import common

BATCH_NORM = common.SlimBatchNormalization
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def image_input(input_shape):
    return keras.Input(input_shape, name="image")


def kaiming_normal_fan_out(kernel_size, filters):
    return keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (kernel_size ** 2 * filters)))


def default_uniform(fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def default_conv_uniform(kernel_size, in_channels, groups):
    return default_uniform(kernel_size ** 2 * in_channels // groups)


def _padded(x, kernel_size, stride, name):
    """`x` and the Keras padding mode of a window with PyTorch's padding kernel_size // 2."""
    if stride == 1:
        return x, "same"
    if kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}.pad")(x)
    return x, "valid"


def conv(x, filters, kernel_size, name, decay, stride=1, groups=1, use_bias=False,
         torch_default_init=False):
    """`nn.Conv2d(in, filters, kernel_size, stride, padding=kernel_size // 2, groups, bias)`.

    groups == in == filters is a depthwise convolution (Keras' DepthwiseConv2D). Other
    grouped convolutions are `groups` convolutions of in / groups channels each, concatenated
    (`<name>.group<i>`, then `<name>`): group i of PyTorch's weight, its output channels
    [i, i + 1) * filters / groups. Keras runs Conv2D(groups=g) through XLA, which made
    ShuffleV1's training step 3x slower on CPU. Kernels are `kaiming_normal_fan_out` (of
    all `filters`), or with torch_default_init PyTorch's `default_conv_uniform`; the only
    biases (VGG's) are zeroed by RepDistiller.
    """
    in_channels = x.shape[-1]
    kernel_initializer = (default_conv_uniform(kernel_size, in_channels, groups)
                          if torch_default_init else kaiming_normal_fan_out(kernel_size, filters))
    x, padding = _padded(x, kernel_size, stride, name)
    if groups > 1 and groups == in_channels == filters:
        return keras.layers.DepthwiseConv2D(
            kernel_size, stride, padding=padding, use_bias=use_bias,
            depthwise_initializer=kernel_initializer, depthwise_regularizer=decay,
            bias_regularizer=decay, name=name)(x)

    def convolution(inputs, layer_name):
        return keras.layers.Conv2D(filters // groups, kernel_size, stride, padding=padding,
                                   use_bias=use_bias, kernel_initializer=kernel_initializer,
                                   kernel_regularizer=decay, bias_regularizer=decay,
                                   name=layer_name)(inputs)

    if groups == 1:
        return convolution(x, name)
    size = in_channels // groups
    return concatenate([convolution(x[..., group * size:(group + 1) * size], f"{name}.group{group}")
                        for group in range(groups)], name)


def batch_norm(x, name, decay, layer=BATCH_NORM):
    """`nn.BatchNorm2d(channels)` (see the module docstring); `layer` is the BN class."""
    return layer(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                 gamma_regularizer=decay, beta_regularizer=decay, name=name)(x)


def relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def add(tensors, name):
    return keras.layers.Add(name=name)(tensors)


def concatenate(tensors, name):
    return keras.layers.Concatenate(name=name)(tensors)


def average_pool(x, pool_size, stride, name):
    """`nn.AvgPool2d(pool_size, stride, padding=pool_size // 2)`, whose average counts the
    padded zeros (count_include_pad=True), unlike Keras' "same" average."""
    if pool_size > 1:
        x = keras.layers.ZeroPadding2D(pool_size // 2, name=f"{name}.pad")(x)
    return keras.layers.AveragePooling2D(pool_size, stride, padding="valid", name=name)(x)


def global_average_pool(x, name):
    """RepDistiller's final `AvgPool2d(s)` / `avg_pool2d(x, s)` over the last s x s map (and
    `AdaptiveAvgPool2d(1)`): a global average at the 32x32 inputs they are written for."""
    return keras.layers.GlobalAveragePooling2D(name=name)(x)


def linear(x, units, name, decay, kernel_initializer=None, bias_initializer=None):
    """`nn.Linear(in, units)`; initialisers default to PyTorch's `default_uniform(in)`."""
    fan_in = x.shape[-1]
    return keras.layers.Dense(
        units, kernel_initializer=kernel_initializer or default_uniform(fan_in),
        bias_initializer=bias_initializer or default_uniform(fan_in),
        kernel_regularizer=decay, bias_regularizer=decay, name=name)(x)


def residual_stages(x, block, widths, blocks_per_stage, strides, names):
    """The stages of RepDistiller's `_make_layer`: stage s (from 1) stacks blocks_per_stage
    blocks `block(x, width, stride, name)`, the first at the stage's stride, the others at 1,
    named `names.format(stage=s, block=b)`. Returns the last output and the output of every
    stage (`forward`'s f1, f2, ...)."""
    stage_outputs = []
    for stage, (width, blocks, stride) in enumerate(zip(widths, blocks_per_stage, strides),
                                                    start=1):
        for index in range(blocks):
            x = block(x, width, stride if index == 0 else 1, names.format(stage=stage, block=index))
        stage_outputs.append(x)
    return x, stage_outputs


def channel_shuffle(x, groups, name):
    """ShuffleNet's `ShuffleBlock`: channel i * (C / g) + j moves to j * g + i."""
    height, width, channels = x.shape[1:]
    x = keras.layers.Reshape((height, width, groups, channels // groups), name=f"{name}.split")(x)
    x = keras.layers.Permute((1, 2, 4, 3), name=f"{name}.transpose")(x)
    return keras.layers.Reshape((height, width, channels), name=name)(x)
