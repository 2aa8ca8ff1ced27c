"""Pieces shared by the methods that pair the two networks' feature maps tap by tap
(AB, CO, VID): the check that the taps pair up, the building and applying of one
layer per tap, and the 1x1 conv + BN connector of AB and CO.

The connector's BN always normalises with the batch's statistics, as in the authors'
codes (KD_methods_with_TF `nets/Multiple.py` passes `is_training=True`;
Knowledge_distillation_via_TF2.0 `distiller/CO.py` calls it with `training=True`).
"""
import keras

from sskd_tf.errors import UserError
from sskd_tf.models import common

AUTHORS_WEIGHT_DECAY = 5e-4
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _agree(first, second):
    return first is None or second is None or first == second


def check_paired_taps(student_shapes, teacher_shapes, compare_widths=False):
    """UserError unless both networks have as many taps, pairwise of the same batch
    and spatial size (and width, with `compare_widths`). Unknown dimensions agree."""
    if len(student_shapes) != len(teacher_shapes):
        raise UserError(
            f"the student has {len(student_shapes)} taps and the teacher {len(teacher_shapes)}"
        )
    if not student_shapes:
        raise UserError("the networks have no taps to pair")
    compared = 4 if compare_widths else 3
    for tap, (student, teacher) in enumerate(zip(student_shapes, teacher_shapes)):
        student, teacher = tuple(student), tuple(teacher)
        if len(student) != 4 or len(teacher) != 4:
            raise UserError(
                f"tap {tap}: need [B, H, W, C] maps, got student {student} and teacher {teacher}"
            )
        if not all(_agree(s, t) for s, t in zip(student[:compared], teacher[:compared])):
            what = "shape" if compare_widths else "batch and spatial size"
            raise UserError(
                f"tap {tap}: student map {student} and teacher map {teacher} differ in {what}"
            )


def build_per_tap(make_layer, student_shapes, teacher_shapes, prefix):
    """[make_layer(teacher width, name=f"{prefix}{tap}")] for each tap, each built on
    the student tap's shape."""
    check_paired_taps(student_shapes, teacher_shapes)
    layers = []
    for tap, (student, teacher) in enumerate(zip(student_shapes, teacher_shapes)):
        layer = make_layer(int(teacher[-1]), name=f"{prefix}{tap}")
        layer.build(tuple(student))
        layers.append(layer)
    return layers


def _shapes(tensors):
    return [tuple(tensor.shape) for tensor in tensors]


def apply_per_tap(layers, student_features, teacher_features):
    """[layer(student map)] for each tap, checked to have the teacher maps' shapes."""
    check_paired_taps(_shapes(student_features), _shapes(teacher_features))
    if len(layers) != len(student_features):
        raise UserError(f"{len(layers)} layers were built for {len(student_features)} taps")
    outputs = [layer(student) for layer, student in zip(layers, student_features)]
    check_paired_taps(_shapes(outputs), _shapes(teacher_features), compare_widths=True)
    return outputs


class Connector(keras.layers.Layer):
    """z = BN(conv1x1(x)) to `width` channels: no bias, no activation, BN (scale and
    centre, momentum 0.9, epsilon 1e-5) on the batch's statistics at every call.
    `weight_decay` regularises the kernel, gamma and beta (`common.l2_decay`)."""

    def __init__(self, width, kernel_initializer, batch_norm_layer,
                 weight_decay=AUTHORS_WEIGHT_DECAY, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        self.kernel_initializer = kernel_initializer
        self.batch_norm_layer = batch_norm_layer
        self.weight_decay = float(weight_decay)

    def build(self, input_shape):
        decay = common.l2_decay(self.weight_decay)
        self.conv = keras.layers.Conv2D(
            self.width, 1, use_bias=False, kernel_initializer=self.kernel_initializer,
            kernel_regularizer=decay, name="conv", dtype=self.dtype_policy)
        self.batch_norm = self.batch_norm_layer(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, gamma_regularizer=decay,
            beta_regularizer=decay, name="bn", dtype=self.dtype_policy)
        self.conv.build(tuple(input_shape))
        self.batch_norm.build(tuple(input_shape[:-1]) + (self.width,))

    def call(self, student_map):
        return self.batch_norm(self.conv(student_map), training=True)
