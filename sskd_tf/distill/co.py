"""CO: the comprehensive overhaul of feature distillation.

Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019 (arXiv 1904.01866): the student, through a 1x1 conv + BN
connector, matches the teacher's pre-ReLU features, the teacher's negative
responses replaced by a per-channel margin m = E[t | t < 0] (t ~ N(beta, gamma^2)
from the BN before the ReLU), with a partial L2 distance that ignores a student
response below a non-positive target.

Followed: Knowledge_distillation_via_TF2.0 `distiller/CO.py: distill` (its
`get_margin`, `loss` and `forward`) and `nets/WResNet.py` (teacher WRN-40-4, student
WRN-16-4). The taps are pre-activations: the outputs, before their ReLU, of the BN
layers `BasicBlock1.0/bn`, `BasicBlock2.0/bn` and `bn_last` (in `sskd_tf.models.wrn`,
whose default taps they are: `stage1_block0_bn`, `stage2_block0_bn`, `final_bn`).
The teacher runs in inference mode (moving statistics), the student in training mode.

- margin per teacher channel, from the gamma and beta of the teacher's BN whose
  output is the tap: beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|) where
  Phi(-beta/|gamma|) > 1e-3, else -3 |gamma|; computed once, from the loaded teacher;
- per tap, z = BN(conv1x1(s_i)) to the teacher's width (no bias, kernel He-normal on
  fan_in, Keras' BN with momentum 0.9 and epsilon 1e-5 on the batch's statistics at
  every call), t_i = max(teacher map, margin) without gradient, and
  L_i = sum_bhwc (z - t_i)^2 1(z > t_i or t_i > 0);
- loss = 1e-3 / B sum_i L_i / 2^(n-1-i), n taps (1/4, 1/2, 1 for three).

Kept quirks: the connector's kernel initialiser is the rewrite's He-normal on fan_in
(KD_methods_with_TF's layers draw on fan_out); the margins model the BN output as
N(beta, gamma^2), while the teacher's taps are normalised by its moving statistics,
which the margin ignores (a better option could take the moving mean and variance
of the BN's input into account).

Schedule (the rewrite's `op_util.py: Optimizer` and `train_w_distillation.py`): no
initialisation stage; every step descends CE + this loss with respect to the student's
trainable variables, which include the connectors (attached to the student model as
`aux_layers`), plus 5e-4 * v added to every one of their gradients (weight decay of
5e-4 sum(w^2) / 2 on the connector kernels and the connector BN's gamma and beta as
on the student's). Nesterov momentum 0.9, learning rate 0.1 multiplied by 0.2 (not
0.1) at 30, 60 and 80 of 100 epochs, batch 128.

The registered method `co` (`CO`) trains by that recipe, `kd_tf2` (training/recipes.py),
unless a run names another. Its `prepare` computes the margins from the teacher it is
given, before training; they are non-trainable weights of the method, so a checkpoint of
the method's weights holds them. A training call before `prepare` is a UserError (zero
margins would train silently against max(t, 0)).
"""
import dataclasses
import math

import keras
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.feature_maps import (AUTHORS_WEIGHT_DECAY, Connector, apply_per_tap,
                                          build_per_tap)
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError

AUTHORS_WEIGHT = 1e-3
TAIL_PROBABILITY_THRESHOLD = 1e-3
SMALL_TAIL_MARGIN_SCALE = -3.0


def overhaul_margin(gamma, beta):
    """Per-channel margin E[x | x < 0] of x ~ N(beta, gamma^2), from the gamma and beta of
    the teacher's BN whose output (before its ReLU) is the tap: beta - |gamma|
    phi(beta/|gamma|) / Phi(-beta/|gamma|) where Phi(-beta/|gamma|) > 1e-3, else
    -3 |gamma|. Computed in float64, returned in gamma's dtype."""
    gamma = tf.convert_to_tensor(gamma)
    scale = tf.abs(tf.cast(gamma, tf.float64))
    shift = tf.cast(beta, tf.float64)
    standardised = shift / scale
    tail = 0.5 * tf.math.erfc(standardised / math.sqrt(2.0))
    density = tf.exp(-tf.square(standardised) / 2.0) / math.sqrt(2.0 * math.pi)
    # The floor only keeps the branch tf.where discards finite.
    conditional_mean = shift - scale * density / tf.maximum(tail, TAIL_PROBABILITY_THRESHOLD)
    margin = tf.where(tail > TAIL_PROBABILITY_THRESHOLD, conditional_mean,
                      SMALL_TAIL_MARGIN_SCALE * scale)
    return tf.cast(margin, gamma.dtype)


def tap_batch_norms(model):
    """The BN layer of `model` whose output is each of its taps (`model.output["features"]`);
    a UserError naming a tap that is not a BN output (CO needs pre-activation taps)."""
    producers = {id(layer.output): layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)}
    batch_norms = []
    for tap, feature in enumerate(model.output["features"]):
        if id(feature) not in producers:
            raise UserError(f"tap {tap} of {model.name!r} is not the output of a batch-norm "
                            "layer: CO needs taps that are BN outputs before their ReLU (the "
                            "wrn{6n+4}_{k} networks' default taps, e.g. --teacher=wrn40_4)")
        batch_norms.append(producers[id(feature)])
    return batch_norms


def teacher_margins(teacher):
    """`overhaul_margin` of each tap of the teacher model, from the BN whose output it is."""
    return [overhaul_margin(layer.gamma, layer.beta) for layer in tap_batch_norms(teacher)]


def build_co_connectors(student_shapes, teacher_shapes, weight_decay=AUTHORS_WEIGHT_DECAY):
    """One built `Connector` per tap (kernel He-normal, Keras' BN), named co_connector0,
    co_connector1, ..."""
    def make(width, name):
        return Connector(width, keras.initializers.HeNormal(), keras.layers.BatchNormalization,
                         weight_decay=weight_decay, name=name)

    return build_per_tap(make, student_shapes, teacher_shapes, "co_connector")


def partial_l2(connected, target):
    """sum over all entries of (z - t)^2 where z > t or t > 0 (the indicator carries no
    gradient)."""
    kept = tf.logical_or(connected > target, target > 0.0)
    return tf.reduce_sum(tf.square(connected - target) * tf.cast(kept, connected.dtype))


def overhaul_loss(student_features, teacher_features, connectors, margins, weight=AUTHORS_WEIGHT):
    """weight / B * sum_i L_i / 2^(n-1-i), L_i the partial L2 of the connected student
    map against max(teacher map, margin). The teacher gets no gradient."""
    connected = apply_per_tap(connectors, student_features, teacher_features)
    margin_widths = [int(margin.shape[-1]) for margin in margins]
    teacher_widths = [int(teacher.shape[-1]) for teacher in teacher_features]
    if margin_widths != teacher_widths:
        raise UserError(f"margins of widths {margin_widths} for teacher taps of widths "
                        f"{teacher_widths}")
    deepest = len(connected) - 1
    per_tap = []
    for tap, (student, teacher, margin) in enumerate(zip(connected, teacher_features, margins)):
        target = tf.stop_gradient(tf.maximum(teacher, tf.cast(margin, teacher.dtype)))
        per_tap.append(partial_l2(student, target) / 2.0 ** (deepest - tap))
    batch = tf.cast(tf.shape(connected[0])[0], connected[0].dtype)
    return weight * tf.add_n(per_tap) / batch


@dataclasses.dataclass(frozen=True)
class COOptions(MethodOptions):
    weight: float = option(
        AUTHORS_WEIGHT, "weight of the CO term, before its 1 / B and the taps' 1 / 2^(n-1-i) "
        "(the rewrite's 1e-3)", at_least=0)


@METHODS.register("co")
class CO(DistillationMethod):
    """A comprehensive overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak, Choi,
    ICCV 2019): a 1x1 conv + BN connector per tap maps the student's pre-ReLU features to
    the teacher's, whose negative responses are raised to a per-channel margin E[t | t < 0]
    computed from the teacher's BN, compared by the paper's partial L2 distance, CE +
    1e-3 / B sum_i L_i / 2^(n-1-i) summed (Knowledge_distillation_via_TF2.0
    `distiller/CO.py`), by that code's recipe (`kd_tf2`). The teacher's taps must be BN
    outputs before their ReLU (the wrn networks' default taps); `prepare` reads their BN.
    Departs as the rewrite does (sskd_tf/distill/co.py): the margin ignores the BN's moving
    statistics; the paper's feature position (before the ReLU) is the rewrite's."""

    Options = COOptions
    library_name = "CODistillation"
    recipe = "kd_tf2"

    def __init__(self, name=None, **options):
        super().__init__(name=name, **options)
        self._teacher_margins = None

    def build(self, student_out_shape, teacher_out_shape):
        teacher_shapes = teacher_out_shape["features"]
        self.connectors = build_co_connectors(student_out_shape["features"], teacher_shapes)
        self.margins = [
            self.add_weight(name=f"margin{tap}", shape=(int(shape[-1]),), initializer="zeros",
                            trainable=False)
            for tap, shape in enumerate(teacher_shapes)]
        if self._teacher_margins is not None:
            self._assign_margins()

    def prepare(self, teacher, train_ds):
        """The margins of the teacher's taps (`teacher_margins`), from its BN parameters
        alone (`train_ds` is not read); a UserError when a tap is not a BN output."""
        self._teacher_margins = [margin.numpy() for margin in teacher_margins(teacher)]
        if self.built:
            self._assign_margins()

    def _assign_margins(self):
        widths = [margin.shape for margin in self._teacher_margins]
        if widths != [tuple(weight.shape) for weight in self.margins]:
            raise UserError(f"{self.name}: the teacher's taps have margins of shapes {widths}, "
                            f"the method was built for {[tuple(w.shape) for w in self.margins]}")
        for weight, margin in zip(self.margins, self._teacher_margins):
            weight.assign(margin.astype(weight.dtype))

    def call(self, student_out, teacher_out, labels, training=False):
        if training and self._teacher_margins is None:
            raise UserError(f"{self.name}: its margins come from the teacher's batch norms: "
                            "call prepare(teacher, data) before training (sskd_tf.Distiller's "
                            "fit and every run do)")
        loss = overhaul_loss(student_out["features"], teacher_out["features"], self.connectors,
                             self.margins, self.options.weight)
        return {"co": loss}

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 1e-5, 1e-1, sampling="log", default=AUTHORS_WEIGHT)}
