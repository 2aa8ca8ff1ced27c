"""RepDistiller's VGGs with batch norm, `vgg8`, `vgg11`, `vgg13`, `vgg16`, `vgg19` (its
`vgg8_bn` ... `vgg19_bn`), after `models/vgg.py`.

Five blocks of conv3x3(+bias)-BN-ReLU units (configurations S, A, B, D, E), each block
without its last ReLU, which `forward` applies; a 2x2 max pool after blocks 0, 1 and 2, and
after block 3 only for 64x64 inputs (`if h == 64`: at 32x32 there is none); global average
pooling (`AdaptiveAvgPool2d(1)`) and `classifier`, one dense layer from 512.
Kernels `kaiming_normal_fan_out` with zero biases; `classifier` N(0, 0.01) with a zero bias.
Layers: `layers.py`; `blockB.I` counts the modules of a block as `nn.Sequential` does (conv,
BN, ReLU, conv, ...).

Features of `forward(is_feat=True)`: f0 block 0 after ReLU (`relu0`), f1-f4 blocks 1-4 after
their ReLU (`reluB`; with preact=True the BN before it, the block's last layer), f5 the
pooled vector (`pool4`). Taps: f1-f4, post-ReLU; for 32x32 inputs 16x16x128, 8x8x256,
4x4x512, 4x4x512.
"""
import keras

from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
BLOCKS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}
# The input height at which block 3 is followed by a max pool (pool3).
POOL3_HEIGHT = 64


def _block(x, widths, decay, block, batch_norm):
    for unit, width in enumerate(widths):
        if unit:
            x = layers.relu(x, f"block{block}.{3 * unit - 1}")
        x = layers.conv(x, width, 3, f"block{block}.{3 * unit}", decay, use_bias=True)
        x = layers.batch_norm(x, f"block{block}.{3 * unit + 1}", decay, batch_norm)
    return layers.relu(x, f"relu{block}")


def _max_pool(x, name):
    return keras.layers.MaxPooling2D(2, name=name)(x)


def build(name, num_classes, input_shape, weight_decay, depth, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = _block(image, BLOCKS[depth][0], decay, 0, batch_norm)
    taps = []
    for block, widths in enumerate(BLOCKS[depth][1:], start=1):
        if block < 4 or input_shape[0] == POOL3_HEIGHT:
            x = _max_pool(x, f"pool{block - 1}")
        x = _block(x, widths, decay, block, batch_norm)
        taps.append(x)
    x = layers.global_average_pool(x, "pool4")
    logits = layers.linear(x, num_classes, "classifier", decay,
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                           bias_initializer="zeros")
    return common.network(image, logits, taps, name)
