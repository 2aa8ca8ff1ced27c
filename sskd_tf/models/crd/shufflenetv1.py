"""RepDistiller's `ShuffleV1` (ShuffleNet, 3 groups, widths 240/480/960), after
`models/ShuffleNetv1.py`.

conv1x1(24)-BN-ReLU, then three stages of 4, 8, 4 bottlenecks, the first of each with
stride 2. A bottleneck: grouped conv1x1(mid)-BN-ReLU, channel shuffle, depthwise
conv3x3(stride)-BN-ReLU, grouped conv1x1-BN, mid = out / 4; stride 1 adds its input, stride
2 concatenates a 3x3 stride-2 average pool of its input (padded zeros counted) after its
out - in channels; ReLU of the result. Global average pooling (`avg_pool2d(4)`), `linear`.
Kept quirks: the first conv1x1 reading the 24-channel stem is not grouped (its shuffle of
one group does nothing), and the depthwise conv is followed by a ReLU.
No initialiser is set, so all are PyTorch's defaults (`default_uniform`: kernels, `linear`'s
weight and bias). Layers: `layers.py`.

Features of `forward(is_feat=True)`: f0 the stem after ReLU (`relu`), f1-f3 each stage's
last block after its ReLU (`layerS.B.out`; with preact=True the sum or concatenation
before it, `layerS.B.preact`), f4 the pooled vector (`pool`). Taps: f1-f3, post-ReLU; for
32x32 inputs 16x16x240, 8x8x480, 4x4x960.
"""
from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
STEM_WIDTH = 24
STAGE_WIDTHS = (240, 480, 960)
STAGE_BLOCKS = (4, 8, 4)
GROUPS = 3


def _conv(x, filters, kernel_size, name, decay, stride=1, groups=1):
    return layers.conv(x, filters, kernel_size, name, decay, stride, groups,
                       torch_default_init=True)


def _bottleneck(x, width, stride, decay, prefix, batch_norm):
    mid = width // 4
    first_groups = 1 if x.shape[-1] == STEM_WIDTH else GROUPS
    out = _conv(x, mid, 1, f"{prefix}.conv1", decay, groups=first_groups)
    out = layers.relu(layers.batch_norm(out, f"{prefix}.bn1", decay, batch_norm), f"{prefix}.relu1")
    out = layers.channel_shuffle(out, first_groups, f"{prefix}.shuffle1")
    out = _conv(out, mid, 3, f"{prefix}.conv2", decay, stride, groups=mid)
    out = layers.relu(layers.batch_norm(out, f"{prefix}.bn2", decay, batch_norm), f"{prefix}.relu2")
    out = _conv(out, width, 1, f"{prefix}.conv3", decay, groups=GROUPS)
    out = layers.batch_norm(out, f"{prefix}.bn3", decay, batch_norm)
    if stride == 2:
        shortcut = layers.average_pool(x, 3, 2, f"{prefix}.shortcut.0")
        out = layers.concatenate([out, shortcut], f"{prefix}.preact")
    else:
        out = layers.add([out, x], f"{prefix}.preact")
    return layers.relu(out, f"{prefix}.out")


def build(name, num_classes, input_shape, weight_decay, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = _conv(image, STEM_WIDTH, 1, "conv1", decay)
    x = layers.relu(layers.batch_norm(x, "bn1", decay, batch_norm), "relu")
    taps = []
    for stage, (width, blocks) in enumerate(zip(STAGE_WIDTHS, STAGE_BLOCKS), start=1):
        for block in range(blocks):
            stride, concatenated = (2, x.shape[-1]) if block == 0 else (1, 0)
            x = _bottleneck(x, width - concatenated, stride, decay, f"layer{stage}.{block}",
                            batch_norm)
        taps.append(x)
    x = layers.global_average_pool(x, "pool")
    logits = layers.linear(x, num_classes, "linear", decay)
    return common.network(image, logits, taps, name)
