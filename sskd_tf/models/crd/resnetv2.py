"""RepDistiller's `ResNet50`, after `models/resnetv2.py` (the torchvision ResNet for 32x32
inputs: a 3x3 stride-1 stem and no max pool).

conv3x3(64)-BN-ReLU, then four stages of 3, 4, 6, 3 bottlenecks of widths 64, 128, 256, 512
(outputs 4x) and strides 1, 2, 2, 2: conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4w)-BN
added to the shortcut, ReLU of the sum. The shortcut is conv1x1(stride)-BN when the stride or
the width changes, else the identity. Global average pooling, `linear`.
Conv layers have no bias, kernels `kaiming_normal_fan_out`; BN gammas start at 1
(zero_init_residual is off); `linear` keeps PyTorch's default uniform init. Layers:
`layers.py`.

Features of `forward(is_feat=True)`: f0 the stem after ReLU (`relu`), f1-f4 each stage's
last block after its ReLU (`layerS.B.out`; with preact=True the sum, `layerS.B.add`), f5 the
pooled vector (`pool`). Taps: f1-f4, post-ReLU; for 32x32 inputs 32x32x256, 16x16x512,
8x8x1024, 4x4x2048.
"""
import functools

from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4


def _bottleneck(x, width, stride, prefix, decay, batch_norm):
    out = layers.conv(x, width, 1, f"{prefix}.conv1", decay)
    out = layers.relu(layers.batch_norm(out, f"{prefix}.bn1", decay, batch_norm), f"{prefix}.relu1")
    out = layers.conv(out, width, 3, f"{prefix}.conv2", decay, stride)
    out = layers.relu(layers.batch_norm(out, f"{prefix}.bn2", decay, batch_norm), f"{prefix}.relu2")
    out = layers.conv(out, EXPANSION * width, 1, f"{prefix}.conv3", decay)
    out = layers.batch_norm(out, f"{prefix}.bn3", decay, batch_norm)
    shortcut = x
    if stride != 1 or x.shape[-1] != EXPANSION * width:
        shortcut = layers.conv(x, EXPANSION * width, 1, f"{prefix}.shortcut.0", decay, stride)
        shortcut = layers.batch_norm(shortcut, f"{prefix}.shortcut.1", decay, batch_norm)
    out = layers.add([out, shortcut], f"{prefix}.add")
    return layers.relu(out, f"{prefix}.out")


def build(name, num_classes, input_shape, weight_decay, blocks_per_stage, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = layers.conv(image, STEM_WIDTH, 3, "conv1", decay)
    x = layers.relu(layers.batch_norm(x, "bn1", decay, batch_norm), "relu")
    block = functools.partial(_bottleneck, decay=decay, batch_norm=batch_norm)
    x, taps = layers.residual_stages(x, block, STAGE_WIDTHS, blocks_per_stage, STAGE_STRIDES,
                                     "layer{stage}.{block}")
    x = layers.global_average_pool(x, "pool")
    logits = layers.linear(x, num_classes, "linear", decay)
    return common.network(image, logits, taps, name)
