"""RepDistiller's `ShuffleV2` (ShuffleNetV2 1x: widths 116/232/464, last 1024), after
`models/ShuffleNetv2.py`.

conv1x1(24)-BN-ReLU, then three stages, each a down block and 3, 7, 3 basic blocks, then
conv1x1(1024)-BN-ReLU, global average pooling (`avg_pool2d(4)`), `linear`.
A down block concatenates two stride-2 branches of out / 2 channels, depthwise
conv3x3(2)-BN - conv1x1-BN-ReLU and conv1x1-BN-ReLU - depthwise conv3x3(2)-BN -
conv1x1-BN-ReLU, and shuffles the channels in 2 groups. A basic block splits its input in
halves (x1, x2), runs conv1x1-BN-ReLU - depthwise conv3x3-BN - conv1x1-BN-ReLU on x2,
concatenates [x1, that] and shuffles in 2 groups.
No initialiser is set, so all are PyTorch's defaults (`default_uniform`: kernels, `linear`'s
weight and bias). Layers: `layers.py`.

Features of `forward(is_feat=True)`: f0 the stem after ReLU (`relu`), f1-f3 each stage's
last block, shuffled (`layerS.B.shuffle`): x1 comes from ReLU outputs too, so they are
post-ReLU; f4 the pooled vector (`pool`). Taps: f1-f3; for 32x32 inputs 16x16x116, 8x8x232,
4x4x464. Not a layer here: preact=True's features, [x1, the branch before its last ReLU]
left unshuffled (RepDistiller returns them beside the shuffled output).
"""
from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
STEM_WIDTH = 24
STAGE_WIDTHS = (116, 232, 464)
STAGE_BLOCKS = (3, 7, 3)
LAST_WIDTH = 1024
SHUFFLE_GROUPS = 2


def _conv_bn(x, filters, kernel_size, index, decay, prefix, batch_norm, stride=1, groups=1):
    """conv{index}-bn{index} of the module `prefix` ("" for the network's own)."""
    scope = f"{prefix}." if prefix else ""
    x = layers.conv(x, filters, kernel_size, f"{scope}conv{index}", decay, stride, groups,
                    torch_default_init=True)
    return layers.batch_norm(x, f"{scope}bn{index}", decay, batch_norm)


def _down_block(x, width, decay, prefix, batch_norm):
    channels, mid = x.shape[-1], width // 2
    left = _conv_bn(x, channels, 3, 1, decay, prefix, batch_norm, stride=2, groups=channels)
    left = layers.relu(_conv_bn(left, mid, 1, 2, decay, prefix, batch_norm), f"{prefix}.relu2")
    right = layers.relu(_conv_bn(x, mid, 1, 3, decay, prefix, batch_norm), f"{prefix}.relu3")
    right = _conv_bn(right, mid, 3, 4, decay, prefix, batch_norm, stride=2, groups=mid)
    right = layers.relu(_conv_bn(right, mid, 1, 5, decay, prefix, batch_norm), f"{prefix}.relu5")
    out = layers.concatenate([left, right], f"{prefix}.concat")
    return layers.channel_shuffle(out, SHUFFLE_GROUPS, f"{prefix}.shuffle")


def _basic_block(x, decay, prefix, batch_norm):
    half = x.shape[-1] // 2
    kept, branch = x[..., :half], x[..., half:]
    branch = layers.relu(_conv_bn(branch, half, 1, 1, decay, prefix, batch_norm), f"{prefix}.relu1")
    branch = _conv_bn(branch, half, 3, 2, decay, prefix, batch_norm, groups=half)
    branch = layers.relu(_conv_bn(branch, half, 1, 3, decay, prefix, batch_norm), f"{prefix}.relu3")
    out = layers.concatenate([kept, branch], f"{prefix}.concat")
    return layers.channel_shuffle(out, SHUFFLE_GROUPS, f"{prefix}.shuffle")


def build(name, num_classes, input_shape, weight_decay, batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = layers.relu(_conv_bn(image, STEM_WIDTH, 1, 1, decay, "", batch_norm), "relu")
    taps = []
    for stage, (width, blocks) in enumerate(zip(STAGE_WIDTHS, STAGE_BLOCKS), start=1):
        x = _down_block(x, width, decay, f"layer{stage}.0", batch_norm)
        for block in range(1, blocks + 1):
            x = _basic_block(x, decay, f"layer{stage}.{block}", batch_norm)
        taps.append(x)
    x = layers.relu(_conv_bn(x, LAST_WIDTH, 1, 2, decay, "", batch_norm), "relu2")
    x = layers.global_average_pool(x, "pool")
    logits = layers.linear(x, num_classes, "linear", decay)
    return common.network(image, logits, taps, name)
