"""AB: distillation of activation boundaries.

Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019 (arXiv 1811.03233): the student,
through a connector r, learns on which side of the activation boundary each of the
teacher's neurons is, by a squared hinge with margin mu in place of the
non-differentiable activation-transfer loss:
||rho(T) * relu(mu - r(S)) + (1 - rho(T)) * relu(mu + r(S))||^2, rho(T) = 1(T > 0).

Followed: KD_methods_with_TF `nets/Multiple.py: AB_distillation` at commit 9fb5414,
called by `nets/ResNet.py` as `AB_distillation(student_feats, teacher_feats, 1., 3e-3)`.
Per tap i, the connector z = BN(conv1x1(s_i)) maps the student to the teacher's width
(no bias; kernel variance scaling fan_out; slim BN with scale, momentum 0.9, epsilon
1e-5, on the batch's statistics at every call, `is_training=True`); with margin m = 1,

  L_i = mean_b sum_hwc [(z + m)^2 1(z > -m and t_i <= 0) + (z - m)^2 1(z <= m and t_i > 0)],

the indicators carrying no gradient, and loss = 3e-3 sum_i 2^i L_i. Kept quirks:

- the taps are the stages' post-ReLU outputs for both networks. The teacher enters
  only through the sign of t_i, the same before and after its ReLU; the student's
  connector reads the student's post-ReLU map;
- the taps are weighted 2^i (the code divides by 2^-i): 1, 2, 4, the deepest the most;
- the authors' `tf.abs` of the non-negative sum is a no-op, left out.

Schedule (`train_w_distill.py`, `op_util.py: Optimizer_w_Initializer`; "AB" is one
of the initialisation methods): for the first `init_epoch = 40` epochs every step
descends this loss plus the weight-decay loss, with respect to the variables this
loss reaches only (the student's layers up to the last tap, and the connectors;
not the classifier); then 100 epochs of CE + weight decay over the student, the
connectors idle (only decaying). Nesterov momentum 0.9, learning rate 0.1 through
the initialisation; the decay points are counted after it (40 + 30, 60, 80 epochs).
The momentum reset meant at the switch never matches its variables (see fitnet.py),
so the momentum carries over. Weight decay of AB's own variables: the authors'
arg_scope regularises the connector kernels and the connector BN's gamma and beta
(5e-4 sum(w^2) / 2 each).

The registered method `ab` (`AB`) trains by FitNet's stages (`fitnet.initialisation_stages`:
`init_epochs` on this loss, then the task alone; the connectors, trained by the main
stage's update too, move there by their weight decay and the momentum they carry). With
`init_epochs=0` it sums CE and this loss every step instead (not the authors').
"""
import dataclasses

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.feature_maps import (AUTHORS_WEIGHT_DECAY, Connector, apply_per_tap,
                                          build_per_tap)
from sskd_tf.distill.fitnet import initialisation_stages
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.models import common

AUTHORS_MARGIN = 1.0
AUTHORS_WEIGHT = 3e-3
AUTHORS_INIT_EPOCHS = 40


def build_ab_connectors(student_shapes, teacher_shapes, weight_decay=AUTHORS_WEIGHT_DECAY):
    """One built `Connector` per tap (kernel variance scaling fan_out, slim's BN), named
    ab_connector0, ab_connector1, ..."""
    def make(width, name):
        return Connector(width, common.variance_scaling("fan_out"), common.SlimBatchNormalization,
                         weight_decay=weight_decay, name=name)

    return build_per_tap(make, student_shapes, teacher_shapes, "ab_connector")


def activation_boundary_loss(connected, teacher_map, margin=AUTHORS_MARGIN):
    """L_i: the batch mean of the per-sample sum of the squared hinges of the connected
    student map `connected` against the sign of `teacher_map`; the indicators carry
    no gradient."""
    teacher_active = teacher_map > 0.0
    below_inactive = tf.logical_and(connected > -margin, tf.logical_not(teacher_active))
    above_active = tf.logical_and(connected <= margin, teacher_active)
    hinge = (tf.square(connected + margin) * tf.cast(below_inactive, connected.dtype)
             + tf.square(connected - margin) * tf.cast(above_active, connected.dtype))
    return tf.reduce_mean(tf.reduce_sum(hinge, axis=[1, 2, 3]))


def ab_loss(student_features, teacher_features, connectors, margin=AUTHORS_MARGIN,
            weight=AUTHORS_WEIGHT):
    """weight * sum_i 2^i L_i over the taps, each student map through its connector.
    The teacher gets no gradient."""
    connected = apply_per_tap(connectors, student_features, teacher_features)
    return weight * tf.add_n([
        2.0 ** tap * activation_boundary_loss(student, tf.stop_gradient(teacher), margin)
        for tap, (student, teacher) in enumerate(zip(connected, teacher_features))
    ])


@dataclasses.dataclass(frozen=True)
class ABOptions(MethodOptions):
    weight: float = option(AUTHORS_WEIGHT, "weight of the AB term (the authors' 3e-3)",
                           at_least=0)
    margin: float = option(AUTHORS_MARGIN, "margin m of the squared hinges (the authors' 1)",
                           at_least=0)
    init_epochs: int = option(
        AUTHORS_INIT_EPOCHS, "epochs of AB-only initialisation before the task alone (the "
        "authors' 40); 0: CE and AB together throughout", at_least=0)


@METHODS.register("ab")
class AB(DistillationMethod):
    """Distillation of activation boundaries (Heo, Lee, Yun, Choi, AAAI 2019): through a
    1x1 conv + BN connector per tap, the student learns the sign of each of the teacher's
    neurons by the paper's squared hinge with margin m in place of its activation-transfer
    loss, taps weighted 1, 2, 4 (KD_methods_with_TF `nets/Multiple.py: AB_distillation`).
    As the authors, `init_epochs=40` epochs train the student's layers up to the last tap
    and the connectors on this loss (+ their weight decay), then the task alone; the
    paper's later fine-tuning is that plain CE. Widths may differ, spatial sizes must match."""

    Options = ABOptions
    library_name = "ABDistillation"

    def stages(self):
        if self.options.init_epochs:
            return initialisation_stages(self.options.init_epochs)
        return super().stages()

    def build(self, student_out_shape, teacher_out_shape):
        self.connectors = build_ab_connectors(student_out_shape["features"],
                                              teacher_out_shape["features"])

    def call(self, student_out, teacher_out, labels, training=False):
        loss = ab_loss(student_out["features"], teacher_out["features"], self.connectors,
                       self.options.margin, self.options.weight)
        return {"ab": loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "weight": hp.Float("weight", 1e-4, 1e-1, sampling="log", default=AUTHORS_WEIGHT),
            "margin": hp.Float("margin", 0.25, 4.0, sampling="log", default=AUTHORS_MARGIN),
        }
