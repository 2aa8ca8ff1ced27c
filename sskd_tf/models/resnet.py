"""ResNet-{6n+2} for 32x32 inputs, after `nets/ResNet.py` of sseung0703/KD_methods_with_TF
(ResNet32 teacher, ResNet8 student).

conv3x3(32)-BN-ReLU, then three stages of n basic blocks (widths 64, 128, 256, strides
1, 2, 2): conv3x3-BN-ReLU-conv3x3-BN plus a conv1x1-BN shortcut when the stride or the
width changes, ReLU of the sum; global average pooling and a dense layer.
Conv layers have no bias; BN momentum 0.9, epsilon 1e-5; conv and dense kernels are
initialised by variance scaling (factor 2, fan_out), the dense bias by zeros.

Taps: the output of the last block of each stage, after its ReLU (the authors' `feat`
collection): 32x32x64, 16x16x128, 8x8x256.

Weight decay: conv kernels, the dense kernel and bias, BN gamma and beta. The authors
hard-code 5e-4 for the dense bias of the student; here it follows `weight_decay`,
which is 5e-4 in their recipe.
"""
import keras

from sskd_tf.models import common

# The authors' tf.contrib.layers.batch_norm (fused): Bessel-corrected moving variance.
BATCH_NORM = common.SlimBatchNormalization
STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 256)
STAGE_STRIDES = (1, 2, 2)


def _conv_bn(x, width, kernel_size, stride, decay, conv_name, bn_name, batch_norm):
    x = keras.layers.Conv2D(width, kernel_size, stride, padding="same", use_bias=False,
                            kernel_initializer=common.variance_scaling("fan_out"),
                            kernel_regularizer=decay, name=conv_name)(x)
    return batch_norm(momentum=0.9, epsilon=1e-5, gamma_regularizer=decay,
                      beta_regularizer=decay, name=bn_name)(x)


def _basic_block(x, width, stride, decay, prefix, batch_norm):
    out = _conv_bn(x, width, 3, stride, decay, f"{prefix}_conv0", f"{prefix}_bn0", batch_norm)
    out = keras.layers.ReLU(name=f"{prefix}_relu0")(out)
    out = _conv_bn(out, width, 3, 1, decay, f"{prefix}_conv1", f"{prefix}_bn1", batch_norm)
    shortcut = x
    if stride > 1 or x.shape[-1] != width:
        shortcut = _conv_bn(x, width, 1, stride, decay,
                            f"{prefix}_shortcut_conv", f"{prefix}_shortcut_bn", batch_norm)
    out = keras.layers.Add(name=f"{prefix}_add")([shortcut, out])
    return keras.layers.ReLU(name=f"{prefix}_relu1")(out)


def build(name, num_classes, input_shape, weight_decay, blocks_per_stage, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = keras.Input(input_shape, name="image")
    x = _conv_bn(image, STEM_WIDTH, 3, 1, decay, "stem_conv", "stem_bn", batch_norm)
    x = keras.layers.ReLU(name="stem_relu")(x)
    taps = []
    for stage, (width, stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES)):
        for block in range(blocks_per_stage):
            x = _basic_block(x, width, stride if block == 0 else 1, decay,
                             f"stage{stage}_block{block}", batch_norm)
        taps.append(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=common.variance_scaling("fan_out"),
                                kernel_regularizer=decay, bias_regularizer=decay,
                                name="logits")(x)
    return common.network(image, logits, taps, name)
