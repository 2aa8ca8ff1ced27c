"""MobileNets of the ECCV 2018 release, after `nets/MobileNet.py` of sseung0703/SSKD_SVD
(the student is `mobile_small`, the teacher the frozen `mobile` network).

conv3x3(32)-BN-ReLU, then depthwise separable units (depthwise 3x3 - BN-ReLU -
pointwise 1x1 - BN-ReLU) of (width, stride)
teacher (64,1) (128,2) (128,1) (256,2) (256,1) (512,2) (512,1),
student (64,1) (128,2) (256,2) (512,2);
global average pooling and a dense layer. Convolutions have no bias, kernels are
initialised by variance scaling (factor 2, fan_in); the dense layer has a zero-initialised
bias. BN: momentum 0.9, slim's default epsilon 1e-3.

The release's network ends after the last 512 unit; the teacher's classifier is commented
out there, so the teacher gets the student's head (pool and dense).

Taps: the last unit of each width, for 32x32 inputs 32x32x64, 16x16x128, 8x8x256, 4x4x512.

Weight decay: conv, pointwise, depthwise and dense kernels (not the dense bias, not BN).
The release hard-codes 1e-4 for the depthwise kernels, the weight decay of its recipe;
here they follow `weight_decay`.

Not kept: the release calls slim's batch norm without `is_training`, so it always
normalises with batch statistics, and it zero-debiases the moving mean; here BN follows
Keras's `training` argument and plain moving averages.
"""
import keras

from sskd_tf.models import common

# The release's slim.batch_norm (fused): Bessel-corrected moving variance.
BATCH_NORM = common.SlimBatchNormalization
STEM_WIDTH = 32
UNITS = {
    "teacher": ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)),
    "student": ((64, 1), (128, 2), (256, 2), (512, 2)),
}


def _bn_relu(x, name, batch_norm):
    x = batch_norm(momentum=0.9, epsilon=1e-3, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _separable_unit(x, width, stride, decay, prefix, batch_norm):
    x = keras.layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False,
                                     depthwise_initializer=common.variance_scaling("fan_in"),
                                     depthwise_regularizer=decay, name=f"{prefix}_depthwise")(x)
    x = _bn_relu(x, f"{prefix}_depthwise", batch_norm)
    x = keras.layers.Conv2D(width, 1, use_bias=False,
                            kernel_initializer=common.variance_scaling("fan_in"),
                            kernel_regularizer=decay, name=f"{prefix}_pointwise")(x)
    return _bn_relu(x, f"{prefix}_pointwise", batch_norm)


def build(name, num_classes, input_shape, weight_decay, role, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    units = UNITS[role]
    image = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(STEM_WIDTH, 3, padding="same", use_bias=False,
                            kernel_initializer=common.variance_scaling("fan_in"),
                            kernel_regularizer=decay, name="stem_conv")(image)
    x = _bn_relu(x, "stem", batch_norm)
    taps = []
    for index, (width, stride) in enumerate(units):
        x = _separable_unit(x, width, stride, decay, f"unit{index}", batch_norm)
        is_last_of_width = index + 1 == len(units) or units[index + 1][0] != width
        if is_last_of_width:
            taps.append(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=common.variance_scaling("fan_in"),
                                kernel_regularizer=decay, name="logits")(x)
    return common.network(image, logits, taps, name)
