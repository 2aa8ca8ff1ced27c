"""RepDistiller's CIFAR ResNets, after `models/resnet.py`: `resnet8` ... `resnet110` (widths
16/16/32/64) and `resnet8x4`, `resnet32x4` (32/64/128/256).

conv3x3(w0)-BN-ReLU, then three stages of (depth - 2) / 6 basic blocks of widths w1, w2, w3
and strides 1, 2, 2: conv3x3(stride)-BN-ReLU-conv3x3-BN added to the shortcut, ReLU of the
sum. The shortcut is `downsample`, conv1x1(stride)-BN, when the stride or the width
changes, else the identity. Global average pooling (`AvgPool2d(8)`), `fc`.
Conv layers have no bias, kernels `kaiming_normal_fan_out`; `fc` keeps PyTorch's default
uniform init (weight and bias). Layers: `layers.py`.

Features of `forward(is_feat=True)`: f0 the stem after ReLU (`relu`), f1-f3 each stage's
last block after its ReLU (`layerS.B.out`; with preact=True the sum before it,
`layerS.B.add`), f4 the pooled vector (`pool`). Taps: f1-f3, post-ReLU; for 32x32 inputs
32x32xw1, 16x16xw2, 8x8xw3.
"""
import functools

from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
STAGE_STRIDES = (1, 2, 2)


def _basic_block(x, width, stride, prefix, decay, batch_norm):
    out = layers.conv(x, width, 3, f"{prefix}.conv1", decay, stride)
    out = layers.relu(layers.batch_norm(out, f"{prefix}.bn1", decay, batch_norm), f"{prefix}.relu")
    out = layers.conv(out, width, 3, f"{prefix}.conv2", decay)
    out = layers.batch_norm(out, f"{prefix}.bn2", decay, batch_norm)
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.conv(x, width, 1, f"{prefix}.downsample.0", decay, stride)
        shortcut = layers.batch_norm(shortcut, f"{prefix}.downsample.1", decay, batch_norm)
    out = layers.add([out, shortcut], f"{prefix}.add")
    return layers.relu(out, f"{prefix}.out")


def build(name, num_classes, input_shape, weight_decay, depth, widths, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = layers.conv(image, widths[0], 3, "conv1", decay)
    x = layers.relu(layers.batch_norm(x, "bn1", decay, batch_norm), "relu")
    block = functools.partial(_basic_block, decay=decay, batch_norm=batch_norm)
    x, taps = layers.residual_stages(x, block, widths[1:], [(depth - 2) // 6] * 3, STAGE_STRIDES,
                                     "layer{stage}.{block}")
    x = layers.global_average_pool(x, "pool")
    logits = layers.linear(x, num_classes, "fc", decay)
    return common.network(image, logits, taps, name)
