"""Wide ResNet WRN-d-k, after `nets/WResNet.py` of sseung0703/Knowledge_distillation_via_TF2.0
(the version used by its `distiller/` package; WRN-40-4 teacher, WRN-16-4 student).

Pre-activation: conv3x3(16), then three stages of (d - 4) / 6 blocks of widths 16k, 32k,
64k and strides 1, 2, 2. A block is BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 added to its
shortcut; after the last stage, BN-ReLU, global average pooling and a dense layer.
Conv layers have no bias, kernels initialised by variance scaling (factor 2, fan_out);
BN momentum 0.9, epsilon 1e-5; the dense kernel is He-normal (fan_in), its bias zeros.

Kept quirk: when a block changes the width, its 1x1 shortcut convolution reads the
block's input *before* the block's BN-ReLU (the original WRN convolves the activated
input).

Taps, as sampled by the rewrite's `distiller/KDSVD.py`: the BN outputs *before* ReLU of
the first block of stages 2 and 3 and of the final BN; for 32x32 inputs
32x32x16k, 16x16x32k, 8x8x64k.

Weight decay: the rewrite adds weight_decay * w to the gradient of every trainable
variable, i.e. conv kernels, BN gamma and beta, the dense kernel and bias.
"""
import keras

from sskd_tf.models import common

# The rewrite's own BN layer (tf.nn.moments): the biased variance, as Keras.
BATCH_NORM = keras.layers.BatchNormalization
STEM_WIDTH = 16
STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def _conv(x, width, kernel_size, stride, decay, name):
    return keras.layers.Conv2D(width, kernel_size, stride, padding="same", use_bias=False,
                               kernel_initializer=common.variance_scaling("fan_out"),
                               kernel_regularizer=decay, name=name)(x)


def _bn(x, decay, name, batch_norm):
    return batch_norm(momentum=0.9, epsilon=1e-5, gamma_regularizer=decay,
                      beta_regularizer=decay, name=name)(x)


def _block(x, width, stride, decay, prefix, batch_norm):
    """Returns the block output and its input's BN output before ReLU (a tap candidate)."""
    normalised = _bn(x, decay, f"{prefix}_bn", batch_norm)
    out = keras.layers.ReLU(name=f"{prefix}_relu")(normalised)
    shortcut = x
    if x.shape[-1] != width:
        shortcut = _conv(x, width, 1, stride, decay, f"{prefix}_shortcut_conv")
    out = _conv(out, width, 3, stride, decay, f"{prefix}_conv0")
    out = keras.layers.ReLU(name=f"{prefix}_relu0")(_bn(out, decay, f"{prefix}_bn0", batch_norm))
    out = _conv(out, width, 3, 1, decay, f"{prefix}_conv1")
    return keras.layers.Add(name=f"{prefix}_add")([shortcut, out]), normalised


def build(name, num_classes, input_shape, weight_decay, blocks_per_stage, widen_factor,
          batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = keras.Input(input_shape, name="image")
    x = _conv(image, STEM_WIDTH, 3, 1, decay, "stem_conv")
    taps = []
    for stage, (width, stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES)):
        for block in range(blocks_per_stage):
            x, normalised_input = _block(x, width * widen_factor, stride if block == 0 else 1,
                                         decay, f"stage{stage}_block{block}", batch_norm)
            if stage > 0 and block == 0:
                taps.append(normalised_input)
    normalised = _bn(x, decay, "final_bn", batch_norm)
    taps.append(normalised)
    x = keras.layers.ReLU(name="final_relu")(normalised)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=common.variance_scaling("fan_in"),
                                kernel_regularizer=decay, bias_regularizer=decay,
                                name="logits")(x)
    return common.network(image, logits, taps, name)
