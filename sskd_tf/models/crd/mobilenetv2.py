"""RepDistiller's `MobileNetV2` (its `mobile_half`: expansion 6, width multiplier 0.5),
after `models/mobilenetv2.py`.

conv3x3(16, stride 2)-BN-ReLU, then seven stages of inverted residuals (t, c, n, s) =
(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
(6, 320, 1, 1), widths c halved; then conv1x1(1280)-BN-ReLU, average pooling and
`classifier.0`, one dense layer. An inverted residual is conv1x1(t in)-BN-ReLU - depthwise
conv3x3(stride)-BN-ReLU - conv1x1(out)-BN, plus its input when the stride is 1 and the
width unchanged. Kept quirks: the expansion conv1x1 is there for t = 1 too, and the last
width, 1280, is only scaled by multipliers above 1.
Conv and depthwise kernels N(0, 2 / (k * k * out)) (`kaiming_normal_fan_out`);
`classifier.0` N(0, 0.01) with a zero bias. The final `AvgPool2d(input // 16,
ceil_mode=True)` covers the whole last map of the 32k x 32k inputs it is written for: a
global average here. Layers: `layers.py`; `blocks.S.B.conv.I` counts the modules of a
block's `nn.Sequential`.

Features of `forward(is_feat=True)` (preact changes nothing): f0 the stem after ReLU
(`conv1.2`), f1-f4 the outputs of stages 1, 2, 4 and 6 (0-based), f5 the pooled vector
(`pool`). Taps: f1-f4, linear bottleneck outputs, before any activation (a BN output, plus
the input in a residual block: they take negative values); for 32x32 inputs 16x16x12,
8x8x16, 4x4x48, 2x2x160.
"""
import keras

from sskd_tf.models import common
from sskd_tf.models.crd import layers

BATCH_NORM = layers.BATCH_NORM
STEM_WIDTH = 32
LAST_WIDTH = 1280
# (expansion t, width c, blocks n, stride s); t = 1 for the first stage, else `expansion`.
STAGES = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
TAPPED_STAGES = (1, 2, 4, 6)


def _conv_bn(x, width, kernel_size, stride, decay, prefix, batch_norm):
    x = layers.conv(x, width, kernel_size, f"{prefix}.0", decay, stride)
    return layers.batch_norm(x, f"{prefix}.1", decay, batch_norm)


def _inverted_residual(x, width, stride, expansion, decay, prefix, batch_norm):
    hidden = x.shape[-1] * expansion
    conv = f"{prefix}.conv"
    out = layers.conv(x, hidden, 1, f"{conv}.0", decay)
    out = layers.relu(layers.batch_norm(out, f"{conv}.1", decay, batch_norm), f"{conv}.2")
    out = layers.conv(out, hidden, 3, f"{conv}.3", decay, stride, groups=hidden)
    out = layers.relu(layers.batch_norm(out, f"{conv}.4", decay, batch_norm), f"{conv}.5")
    out = layers.conv(out, width, 1, f"{conv}.6", decay)
    out = layers.batch_norm(out, f"{conv}.7", decay, batch_norm)
    if stride == 1 and x.shape[-1] == width:
        out = layers.add([x, out], f"{prefix}.add")
    return out


def build(name, num_classes, input_shape, weight_decay, expansion, width_multiplier,
          batch_norm=BATCH_NORM):
    decay = common.l2_decay(weight_decay)
    image = layers.image_input(input_shape)
    x = _conv_bn(image, int(STEM_WIDTH * width_multiplier), 3, 2, decay, "conv1", batch_norm)
    x = layers.relu(x, "conv1.2")
    taps = []
    for stage, (width, blocks, stride) in enumerate(STAGES):
        for block in range(blocks):
            x = _inverted_residual(x, int(width * width_multiplier), stride if block == 0 else 1,
                                   1 if stage == 0 else expansion, decay,
                                   f"blocks.{stage}.{block}", batch_norm)
        if stage in TAPPED_STAGES:
            taps.append(x)
    last_width = int(LAST_WIDTH * width_multiplier) if width_multiplier > 1 else LAST_WIDTH
    x = layers.relu(_conv_bn(x, last_width, 1, 1, decay, "conv2", batch_norm), "conv2.2")
    x = layers.global_average_pool(x, "pool")
    logits = layers.linear(x, num_classes, "classifier.0", decay,
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                           bias_initializer="zeros")
    return common.network(image, logits, taps, name)
