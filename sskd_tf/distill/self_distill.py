"""Self-distillation: shallow classifiers taught by the network's deepest one.

Zhang, Bao, Ma, "Self-Distillation: Towards Efficient and Compact Neural
Networks", IEEE TPAMI 2021 (journal version of "Be Your Own Teacher", ICCV 2019):
every tap but the last gets a shallow classifier (attention module,
downsampling bottleneck, pooling, dense); the deepest classifier, here the
student's own logits, teaches them. The loss of shallow exit i is
(1 - alpha) CE(q_i, y) + alpha KL(q_C^T || q_i^T) + lambda ||F_i - F_C||^2,
alpha = 0.3, temperature T = 3, lambda = 0.03.

Followed: the authors' journal code (ArchipLab-LinfengZhang/pytorch-self-distillation-final,
`train.py`, `resnet.py`). Choices of this port:

- the deepest exit's CE has weight 1 (`task_weight`, as the authors' `train.py`),
  each shallow exit's CE 1 - alpha;
- the deepest logits and feature are stop-gradient targets (the authors detach
  them); KL replaces the authors' soft cross-entropy, which differs by the
  teacher's entropy only (same gradient, zero when the exits agree); no T^2;
- attention mask: separable conv (stride 2) - BN - ReLU - separable conv,
  bilinear resize back, sigmoid. The authors' mask ends with BN-ReLU before the
  sigmoid, which keeps it in [0.5, 1); that BN-ReLU is dropped here;
- bottleneck: separable conv blocks of stride 2 (as the authors' `SepConv`) until
  the map is no larger than the last tap, widths growing geometrically to the
  last tap's width (doubling for the built-in networks); one stride-1 block when
  the tap already has the last tap's resolution;
- F_i is the pooled bottleneck output and F_C the pooled last tap, of equal
  widths, so no adaptation layer is needed; the hint is the squared L2 summed
  over channels, batch mean, on every shallow exit. The authors' journal
  `train.py` has no hint term: lambda = 0.03 is the paper's.
"""
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.soft_logits import soft_logits_loss
from sskd_tf.errors import UserError

BATCH_NORM = {"momentum": 0.9, "epsilon": 1e-5}


def separable_conv(out_width, stride):
    """Depthwise 3x3 (stride) then pointwise to out_width, no biases."""
    return [
        keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False),
        keras.layers.Conv2D(out_width, 1, use_bias=False),
    ]


def batch_norm_relu():
    return [keras.layers.BatchNormalization(**BATCH_NORM), keras.layers.ReLU()]


def separable_block(in_width, out_width, stride):
    """The authors' `SepConv`: separable conv (stride) - BN - ReLU - separable conv
    to out_width - BN - ReLU."""
    return (
        separable_conv(in_width, stride)
        + batch_norm_relu()
        + separable_conv(out_width, 1)
        + batch_norm_relu()
    )


def bottleneck_widths(tap_shape, last_shape):
    """(width, stride) of each bottleneck block taking a tap to the last tap's size."""
    height, tap_width, last_width = tap_shape[1], tap_shape[-1], last_shape[-1]
    downsamplings = 0
    while height > last_shape[1]:
        height = math.ceil(height / 2)
        downsamplings += 1
    if downsamplings == 0:
        return [(last_width, 1)]
    growth = last_width / tap_width
    widths = [round(tap_width * growth ** ((k + 1) / downsamplings)) for k in range(downsamplings)]
    widths[-1] = last_width
    return [(width, 2) for width in widths]


def layer_flops(layer, output_shape):
    """2 x multiply-adds of a conv, depthwise conv or dense layer (biases ignored), else 0."""
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        return 2 * int(np.prod(layer.kernel.shape)) * output_shape[1] * output_shape[2]
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(np.prod(layer.kernel.shape))
    return 0


def sequential_flops(layers, input_shape):
    flops, shape = 0, input_shape
    for layer in layers:
        shape = layer.compute_output_shape(shape)
        flops += layer_flops(layer, shape)
    return flops


class ShallowExit(keras.layers.Layer):
    """Attention-masked tap -> bottleneck -> global average pool -> dense."""

    def __init__(self, last_shape, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.last_shape = tuple(last_shape)
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        _, height, width, channels = input_shape
        self.attention = keras.Sequential(
            separable_conv(channels, 2)
            + batch_norm_relu()
            + separable_conv(channels, 1)
            + [
                keras.layers.Resizing(height, width, interpolation="bilinear"),
                keras.layers.Activation("sigmoid"),
            ]
        )
        blocks, in_width = [], channels
        for out_width, stride in bottleneck_widths(input_shape, self.last_shape):
            blocks += separable_block(in_width, out_width, stride)
            in_width = out_width
        self.bottleneck = keras.Sequential(blocks)
        self.classifier = keras.layers.Dense(self.num_classes)
        self.attention.build(input_shape)
        self.bottleneck.build(input_shape)
        self.classifier.build((None, in_width))
        self.flops = (
            sequential_flops(self.attention.layers, input_shape)
            + sequential_flops(self.bottleneck.layers, input_shape)
            + layer_flops(self.classifier, (None, self.num_classes))
        )

    def call(self, tap, training=None):
        """(pooled bottleneck feature [B, D_last], logits [B, classes])."""
        masked = tap * self.attention(tap, training=training)
        feature = tf.reduce_mean(self.bottleneck(masked, training=training), axis=[1, 2])
        return feature, self.classifier(feature)


def cross_entropy(labels, logits):
    """Batch-mean softmax cross-entropy; `labels` sparse [B] or one-hot [B, C]."""
    if labels.shape.rank == logits.shape.rank:
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits))
    labels = tf.cast(labels, tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def exit_losses(logits, feature, deepest_logits, deepest_feature, labels, temperature):
    """Unweighted (CE, KL to the deepest exit at `temperature`, squared L2 to the
    deepest feature) of one shallow exit. The deepest exit gets no gradient."""
    hint = tf.reduce_mean(
        tf.reduce_sum(tf.square(feature - tf.stop_gradient(deepest_feature)), axis=-1)
    )
    return (
        cross_entropy(labels, logits),
        soft_logits_loss(logits, deepest_logits, temperature),
        hint,
    )


@dataclasses.dataclass(frozen=True)
class SelfDistillationOptions(MethodOptions):
    kd_weight: float = option(0.3, "alpha: weight of each shallow exit's KD term (its CE "
                              "weighs 1 - alpha)", at_least=0)
    temperature: float = option(3.0, "softmax temperature of the KD terms", at_least=1e-12)
    feature_weight: float = option(0.03, "lambda: weight of each shallow exit's feature hint",
                                   at_least=0)


@METHODS.register("self_distill")
class SelfDistillation(DistillationMethod):
    """Shallow classifiers on the student's taps, taught by its deepest one (Zhang et al.,
    TPAMI 2021); no teacher network."""

    Options = SelfDistillationOptions
    library_name = "SelfDistillation"
    needs_teacher = False
    min_taps = 2
    has_exits = True

    def build(self, student_out_shape):
        taps = student_out_shape["features"]
        if len(taps) < 2:
            raise UserError("self-distillation needs 2 or more taps: shallow exits and the last")
        num_classes = student_out_shape["logits"][-1]
        self.heads = []
        for index, tap_shape in enumerate(taps[:-1]):
            head = ShallowExit(taps[-1], num_classes, name=f"exit_{index}")
            head.build(tuple(tap_shape))
            self.heads.append(head)

    def _ensure_built(self, student_out):
        if not self.built:
            self.build(tf.nest.map_structure(lambda t: tuple(t.shape), student_out))

    def exit_logits(self, student_out, training=False):
        """Logits of every exit, shallowest first; the last is the student's own."""
        self._ensure_built(student_out)
        shallow = [
            head(tap, training=training)[1]
            for head, tap in zip(self.heads, student_out["features"][:-1])
        ]
        return shallow + [student_out["logits"]]

    def head_flops(self):
        """FLOPs (2 x multiply-adds of conv and dense layers) of each shallow head."""
        return [head.flops for head in self.heads]

    def exit_flops(self, student, count_flops=None):
        """FLOPs of inference through each exit, shallowest first: the student up to
        the exit's tap plus its head; the last exit is the whole student.
        `count_flops(model)` defaults to `sskd_tf.models.count_flops`; the student
        must be a functional model whose output dict holds the taps."""
        if count_flops is None:
            from sskd_tf.models import count_flops
        taps = student.output["features"]
        self._ensure_built({"logits": student.output["logits"], "features": taps})
        trunks = [count_flops(keras.Model(student.inputs, tap)) for tap in taps[:-1]]
        return [trunk + head for trunk, head in zip(trunks, self.head_flops())] + [
            count_flops(student)
        ]

    def call(self, student_out, teacher_out, labels, training=False):
        features = student_out["features"]
        deepest_logits = student_out["logits"]
        deepest_feature = tf.reduce_mean(features[-1], axis=[1, 2])
        terms = {}
        for index, (head, tap) in enumerate(zip(self.heads, features[:-1])):
            feature, logits = head(tap, training=training)
            ce, kd, hint = exit_losses(
                logits, feature, deepest_logits, deepest_feature, labels, self.options.temperature
            )
            terms[f"exit_{index}_ce"] = (1.0 - self.options.kd_weight) * ce
            terms[f"exit_{index}_kd"] = self.options.kd_weight * kd
            terms[f"exit_{index}_hint"] = self.options.feature_weight * hint
        return terms

    @classmethod
    def search_space(cls, hp):
        return {
            "kd_weight": hp.Float("kd_weight", 0.1, 0.9, default=0.3),
            "temperature": hp.Float("temperature", 1.0, 8.0, default=3.0),
            "feature_weight": hp.Float("feature_weight", 1e-3, 1.0, sampling="log", default=0.03),
        }
