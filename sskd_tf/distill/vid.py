"""VID: variational information distillation.

Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge
Transfer", CVPR 2019 (arXiv 1904.05835): the student maximises a
variational lower bound of the mutual information with the teacher, i.e. minimises
-log q(t | s) for a Gaussian q with a mean mu(s) regressed from the student's map
and a per-channel variance softplus(alpha) + epsilon.

Followed: KD_methods_with_TF `nets/Multiple.py: VID` at commit 9fb5414. Per tap, C the
teacher's width, mu = BN(fc(relu(BN(fc(relu(BN(fc(s)))))))) with per-pixel linear
maps C_S -> 2C -> 2C -> C (no bias; kernels variance scaling fan_out; BN with
scale, momentum 0.9, epsilon 1e-5, on the batch's statistics at every call: the
authors' BN sits outside the scope that passes the network's `is_training`, so it
takes slim's default, training). Kept quirks:

- the variance is softplus(alpha) + 1, alpha initialised to 5 (variance 6.007): the
  authors' epsilon is 1 where the paper's is a small constant, so no channel can be
  predicted with a variance below 1 (a better option: a small epsilon);
- the loss per tap is mean_bhwc(log var + (t - mu)^2 / var) / 2: a mean over batch,
  positions and channels, where the paper sums over channels and positions;
- the function's weight argument (`l=1e-1`) is never applied: the taps' losses are
  summed unweighted;
- every fc is followed by a BN, the last one too, so mu is a batch-normalised map (a
  better option could be RepDistiller's `VIDLoss` regressor, three 1x1 convolutions
  with ReLUs between, no BN, its middle width the teacher's).

`nets/ResNet.py` never calls VID (the authors' table has no VID row); the port
calls it as the other multi-map losses, on the three stages' post-ReLU maps. (The
authors' function also takes [B, C] taps, with mu = s unregressed; here every tap
must be a [B, H, W, C] map.)

Schedule (`op_util.py: Optimizer_w_Distillation`, "VID" among the plain multi-task
methods; `train_w_distill.py` gives it no initialisation stage): every step descends
CE + weight decay + this loss with respect to the student and the regressors,
Nesterov momentum 0.9. Weight decay of VID's own variables: the authors' arg_scope
(`ResNet_arg_scope(5e-4)`) regularises the fc kernels and the BN gamma and beta
(5e-4 sum(w^2) / 2 each); alpha (a bare `tf.get_variable`) is not regularised.

The registered method `vid` (`VID`) owns one regressor per tap (their weights train and
are checkpointed with the student; their regularisers put that weight decay in the
method's `losses`, which every update that trains the method adds).
"""
import dataclasses

import keras
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.feature_maps import (AUTHORS_WEIGHT_DECAY, BN_EPSILON, BN_MOMENTUM,
                                          apply_per_tap, build_per_tap)
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.models import common

AUTHORS_ALPHA_INIT = 5.0
VARIANCE_FLOOR = 1.0
HIDDEN_WIDTH_FACTOR = 2


class VariationalRegressor(keras.layers.Layer):
    """One tap's Gaussian: `call(student_map)` is the mean mu [B, H, W, C] regressed
    from the student's map; `variance()` the per-channel softplus(alpha) + 1 [C].
    Sublayers fc0, bn0, fc1, bn1, fc2, bn2; weight `alpha`."""

    def __init__(self, teacher_width, weight_decay=AUTHORS_WEIGHT_DECAY,
                 alpha_init=AUTHORS_ALPHA_INIT, **kwargs):
        super().__init__(**kwargs)
        self.teacher_width = int(teacher_width)
        self.weight_decay = float(weight_decay)
        self.alpha_init = float(alpha_init)

    def build(self, input_shape):
        decay = common.l2_decay(self.weight_decay)
        hidden = HIDDEN_WIDTH_FACTOR * self.teacher_width
        self.dense_layers, self.batch_norms = [], []
        shape = tuple(input_shape)
        for index, width in enumerate((hidden, hidden, self.teacher_width)):
            dense = keras.layers.Dense(
                width, use_bias=False, kernel_initializer=common.variance_scaling("fan_out"),
                kernel_regularizer=decay, name=f"fc{index}", dtype=self.dtype_policy)
            batch_norm = common.SlimBatchNormalization(
                momentum=BN_MOMENTUM, epsilon=BN_EPSILON, gamma_regularizer=decay,
                beta_regularizer=decay, name=f"bn{index}", dtype=self.dtype_policy)
            dense.build(shape)
            shape = shape[:-1] + (width,)
            batch_norm.build(shape)
            self.dense_layers.append(dense)
            self.batch_norms.append(batch_norm)
        self.alpha = self.add_weight(
            name="alpha", shape=(self.teacher_width,),
            initializer=keras.initializers.Constant(self.alpha_init))

    def call(self, student_map):
        hidden = student_map
        for dense, batch_norm in zip(self.dense_layers[:-1], self.batch_norms[:-1]):
            hidden = tf.nn.relu(batch_norm(dense(hidden), training=True))
        return self.batch_norms[-1](self.dense_layers[-1](hidden), training=True)

    def variance(self):
        return tf.math.softplus(self.alpha) + VARIANCE_FLOOR


def build_vid_regressors(student_shapes, teacher_shapes, weight_decay=AUTHORS_WEIGHT_DECAY):
    """One built `VariationalRegressor` per tap, named vid0, vid1, ..."""
    def make(width, name):
        return VariationalRegressor(width, weight_decay=weight_decay, name=name)

    return build_per_tap(make, student_shapes, teacher_shapes, "vid")


def vid_tap_loss(teacher_map, mean, variance):
    """mean over batch, positions and channels of (log var + (t - mu)^2 / var), / 2."""
    return tf.reduce_mean(tf.math.log(variance) + tf.square(teacher_map - mean) / variance) / 2.0


def vid_loss(student_features, teacher_features, regressors):
    """Sum over taps of `vid_tap_loss`, mu and the variance from each tap's regressor.
    The teacher gets no gradient."""
    means = apply_per_tap(regressors, student_features, teacher_features)
    return tf.add_n([
        vid_tap_loss(tf.stop_gradient(teacher), mean, regressor.variance())
        for mean, teacher, regressor in zip(means, teacher_features, regressors)
    ])


@dataclasses.dataclass(frozen=True)
class VIDOptions(MethodOptions):
    weight: float = option(
        1.0, "weight of the VID term (the authors' function takes l=0.1 and never applies "
        "it: 1)", at_least=0)


@METHODS.register("vid")
class VID(DistillationMethod):
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence, Dai, CVPR 2019):
    per tap, -log q(t | s) of a Gaussian whose mean is regressed from the student's map
    and whose per-channel variance is learned (the paper's variational bound on the
    mutual information), CE + the taps' sum, summed (KD_methods_with_TF
    `nets/Multiple.py: VID`). Departs from the paper as the authors' code does
    (sskd_tf/distill/vid.py): the variance is at least 1, the loss a mean over batch,
    positions and channels, the mean a batch-normalised map. The authors never call it
    (no VID row in their table): here it reads every tap, as their other multi-map losses."""

    Options = VIDOptions
    library_name = "VIDDistillation"

    def build(self, student_out_shape, teacher_out_shape):
        self.regressors = build_vid_regressors(student_out_shape["features"],
                                               teacher_out_shape["features"])

    def call(self, student_out, teacher_out, labels, training=False):
        loss = vid_loss(student_out["features"], teacher_out["features"], self.regressors)
        return {"vid": self.options.weight * loss}

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 1e-2, 1e2, sampling="log", default=1.0)}
