"""ResNeXt-style networks of the ECCV 2018 release, after `nets/ResNext.py` of
sseung0703/SSKD_SVD (the student is `ECCV_small`, the teacher `ECCV`).

conv3x3(64)-BN-ReLU, then three bottlenecks of depth 64, 128, 256 and stride 1, 2, 2.
A bottleneck runs parallel paths (8 in the teacher, 2 in the student) of
conv1x1(64)-BN-ReLU-conv3x3(64, stride)-BN-ReLU, concatenates them and applies
conv1x1(depth)-BN; the shortcut is the identity, or for stride 2 a 2x2 average pool
with the channels zero-padded by depth / 4 on each side; ReLU of the sum. Global
average pooling and a dense layer.
Convolutions have no bias, kernels initialised by variance scaling (factor 2, fan_in);
BN momentum 0.9, slim's default epsilon 1e-3. The dense layer is outside the release's
arg scope, so it has slim's defaults: Glorot-uniform kernel, zero bias.

Taps: the stem and the three bottleneck outputs, for 32x32 inputs 32x32x64, 32x32x64,
16x16x128, 8x8x256.

Weight decay: conv kernels only (no BN parameter, and not the dense layer, which the
release leaves without regulariser).

Not kept: the release zero-debiases BN's moving mean; here moving averages are plain.
"""
import keras

from sskd_tf.models import common

# The release's slim.batch_norm (fused): Bessel-corrected moving variance.
BATCH_NORM = common.SlimBatchNormalization
STEM_WIDTH = 64
PATH_WIDTH = 64
BOTTLENECKS = ((64, 1), (128, 2), (256, 2))
PATHS = {"teacher": 8, "student": 2}


@keras.saving.register_keras_serializable(package="sskd_tf")
class ChannelPad(keras.layers.Layer):
    """Zero-pads the channel axis by `pad` channels on each side."""

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.pad, self.pad]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 2 * self.pad)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


def _conv_bn(x, width, kernel_size, stride, decay, name, batch_norm):
    x = keras.layers.Conv2D(width, kernel_size, stride, padding="same", use_bias=False,
                            kernel_initializer=common.variance_scaling("fan_in"),
                            kernel_regularizer=decay, name=name)(x)
    return batch_norm(momentum=0.9, epsilon=1e-3, name=f"{name}_bn")(x)


def _bottleneck(x, depth, stride, paths, decay, prefix, batch_norm):
    branches = []
    for path in range(paths):
        branch = _conv_bn(x, PATH_WIDTH, 1, 1, decay, f"{prefix}_path{path}_reduce", batch_norm)
        branch = keras.layers.ReLU(name=f"{prefix}_path{path}_reduce_relu")(branch)
        branch = _conv_bn(branch, PATH_WIDTH, 3, stride, decay, f"{prefix}_path{path}_conv", batch_norm)
        branches.append(keras.layers.ReLU(name=f"{prefix}_path{path}_conv_relu")(branch))
    out = keras.layers.Concatenate(name=f"{prefix}_concat")(branches)
    out = _conv_bn(out, depth, 1, 1, decay, f"{prefix}_transition", batch_norm)
    shortcut = x
    if stride == 2:
        shortcut = keras.layers.AveragePooling2D(2, name=f"{prefix}_shortcut_pool")(shortcut)
        shortcut = ChannelPad(depth // 4, name=f"{prefix}_shortcut_pad")(shortcut)
    out = keras.layers.Add(name=f"{prefix}_add")([shortcut, out])
    return keras.layers.ReLU(name=f"{prefix}_relu")(out)


def build(name, num_classes, input_shape, weight_decay, role, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = keras.Input(input_shape, name="image")
    x = _conv_bn(image, STEM_WIDTH, 3, 1, decay, "stem_conv", batch_norm)
    x = keras.layers.ReLU(name="stem_relu")(x)
    taps = [x]
    for index, (depth, stride) in enumerate(BOTTLENECKS):
        x = _bottleneck(x, depth, stride, PATHS[role], decay, f"bottleneck{index}", batch_norm)
        taps.append(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return common.network(image, logits, taps, name)
