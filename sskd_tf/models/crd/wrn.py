"""RepDistiller's Wide ResNets `wrn_16_1`, `wrn_16_2`, `wrn_40_1`, `wrn_40_2`, after
`models/wrn.py` (pre-activation, dropout 0).

conv3x3(16), then three stages (`block1`-`block3`) of (depth - 4) / 6 blocks of widths 16k,
32k, 64k and strides 1, 2, 2, then BN-ReLU, global average pooling (`avg_pool2d(8)`), `fc`.
A block whose width does not change: BN-ReLU-conv3x3-BN-ReLU-conv3x3 added to its raw
input. A block that changes it (the first of a stage; in block1 only when k > 1): its input
goes through BN-ReLU first, and both the residual branch and the 1x1 `convShortcut`(stride)
read the activated input, as in the original WRN.
Conv layers have no bias, kernels N(0, 2 / (k * k * out)) (`kaiming_normal_fan_out`);
`fc` has a zero bias and PyTorch's default uniform kernel. Layers: `layers.py`.

Features of `forward(is_feat=True)`: f0 the stem convolution (`conv1`), f1-f3 the outputs of
block1-block3 (the residual sums `blockS.layer.B.add`, neither normalised nor rectified), f4
the pooled vector (`pool`). With preact=True f1-f3 become the BN that next reads them
(`block2.layer.0.bn1`, `block3.layer.0.bn1`, `bn1`), before its ReLU; RepDistiller applies
those BNs a second time to get them, which in training updates their statistics twice.
Taps: f1-f3 as preact=False gives them, raw sums (they take negative values); for 32x32
inputs 32x32x16k, 16x16x32k, 8x8x64k.
"""
import functools

from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
STEM_WIDTH = 16
STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def _block(x, width, stride, prefix, decay, batch_norm):
    activated = layers.relu(layers.batch_norm(x, f"{prefix}.bn1", decay, batch_norm),
                            f"{prefix}.relu1")
    out = layers.conv(activated, width, 3, f"{prefix}.conv1", decay, stride)
    out = layers.relu(layers.batch_norm(out, f"{prefix}.bn2", decay, batch_norm), f"{prefix}.relu2")
    out = layers.conv(out, width, 3, f"{prefix}.conv2", decay)
    shortcut = x
    if x.shape[-1] != width:
        shortcut = layers.conv(activated, width, 1, f"{prefix}.convShortcut", decay, stride)
    return layers.add([shortcut, out], f"{prefix}.add")


def build(name, num_classes, input_shape, weight_decay, depth, widen_factor,
          batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = layers.conv(image, STEM_WIDTH, 3, "conv1", decay)
    block = functools.partial(_block, decay=decay, batch_norm=batch_norm)
    x, taps = layers.residual_stages(x, block, [width * widen_factor for width in STAGE_WIDTHS],
                                     [(depth - 4) // 6] * 3, STAGE_STRIDES,
                                     "block{stage}.layer.{block}")
    x = layers.relu(layers.batch_norm(x, "bn1", decay, batch_norm), "relu")
    x = layers.global_average_pool(x, "pool")
    logits = layers.linear(x, num_classes, "fc", decay, bias_initializer="zeros")
    return common.network(image, logits, taps, name)
