"""FSP: flow of solution procedure matrices.

Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast Optimization,
Network Minimization and Transfer Learning", CVPR 2017, eq. 1-2: the FSP matrix
of two maps F1 [h, w, m], F2 [h, w, n] is G[i, j] = sum_{s,t} F1[s,t,i] F2[s,t,j] / (h w),
and the student matches the teacher's matrices in squared L2 norm.

Matrices relate consecutive taps of one network; the larger map is max-pooled
to the smaller one (both authors' codes pool 2x2 with stride 2; here the pool is
the size ratio, the same for every built-in network). The loss per pair is the
batch mean of sum((G_T - G_S)^2) / 2. Two normalisations, `normalisation=`:

- "kd_methods" (default; KD_methods_with_TF `nets/Shared.py`, `train_w_distill.py`,
  `op_util.py`): pairs summed, times weight 1e-3; trained as FitNet, 40 epochs on
  the FSP (+ weight decay) gradients only, then cross-entropy alone.
- "eccv2018" (SSKD_SVD `nets/FSP.py`): pairs summed, divided by the summed matrix
  sizes sum(D_top * D_bottom). The release ships this loss without a caller; its
  only training script (`train.py`) applies the clipped multi-task rule to
  whatever distillation loss the network returns, so this mode uses
  `gradient_rule = "clip"` and no initialisation phase.
"""
import dataclasses
import typing

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.fitnet import initialisation_stages
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError

NORMALISATIONS = ("kd_methods", "eccv2018")
KD_METHODS_WEIGHT = 1e-3
KD_METHODS_INIT_EPOCHS = 40


def fsp_matrix(top, bottom):
    """[B, D_top, D_bottom] flow matrix of two consecutive maps (paper eq. 1), the
    larger map max-pooled by the ratio of the heights first."""
    top_h, bottom_h = top.shape[1], bottom.shape[1]
    if top_h > bottom_h:
        ratio = top_h // bottom_h
        top = tf.nn.max_pool2d(top, ratio, ratio, "VALID")
    if tuple(top.shape[1:3]) != tuple(bottom.shape[1:3]):
        raise UserError(
            f"cannot pool a {tuple(top.shape[1:3])} map to {tuple(bottom.shape[1:3])}"
        )
    _, h, w, _ = bottom.shape
    top = tf.reshape(top, [-1, h * w, top.shape[-1]])
    bottom = tf.reshape(bottom, [-1, h * w, bottom.shape[-1]])
    return tf.matmul(top, bottom, transpose_a=True) / float(h * w)


def fsp_loss(student_features, teacher_features, normalisation="kd_methods"):
    """Unweighted FSP loss: sum over consecutive pairs of the batch mean of
    sum((G_T - G_S)^2) / 2, divided by sum(D_top * D_bottom) for "eccv2018".
    The teacher gets no gradient."""
    if normalisation not in NORMALISATIONS:
        raise UserError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise UserError("FSP needs the same number (at least 2) of student and teacher taps")
    per_pair, matrix_sizes = [], 0
    for pair in range(len(student_features) - 1):
        student = fsp_matrix(student_features[pair], student_features[pair + 1])
        teacher = fsp_matrix(
            tf.stop_gradient(teacher_features[pair]), tf.stop_gradient(teacher_features[pair + 1])
        )
        if student.shape[1:] != teacher.shape[1:]:
            raise UserError(
                f"taps {pair}-{pair + 1}: student FSP matrix {tuple(student.shape[1:])} and "
                f"teacher FSP matrix {tuple(teacher.shape[1:])} differ; widths must match"
            )
        squared_error = tf.reduce_sum(tf.square(teacher - student), axis=[1, 2]) / 2.0
        per_pair.append(tf.reduce_mean(squared_error))
        matrix_sizes += teacher.shape[1] * teacher.shape[2]
    loss = tf.add_n(per_pair)
    return loss / float(matrix_sizes) if normalisation == "eccv2018" else loss


@dataclasses.dataclass(frozen=True)
class FSPOptions(MethodOptions):
    """`weight` and `init_epochs` default to the chosen normalisation's recipe
    (kd_methods: 1e-3 and 40; eccv2018: 1 and 0)."""

    normalisation: str = option("kd_methods", "kd_methods (KD_methods_with_TF) or eccv2018 "
                                "(SSKD_SVD nets/FSP.py)", choices=NORMALISATIONS)
    weight: typing.Optional[float] = option(
        None, "weight of the FSP term; None: the normalisation's (1e-3 or 1)", at_least=0)
    init_epochs: typing.Optional[int] = option(
        None, "epochs of FSP-only initialisation before the task alone; None: the "
        "normalisation's (40 or 0)", at_least=0)

    def __post_init__(self):
        super().__post_init__()
        kd_methods = self.normalisation == "kd_methods"
        if self.weight is None:
            object.__setattr__(self, "weight", KD_METHODS_WEIGHT if kd_methods else 1.0)
        if self.init_epochs is None:
            object.__setattr__(self, "init_epochs", KD_METHODS_INIT_EPOCHS if kd_methods else 0)


@METHODS.register("fsp")
class FSP(DistillationMethod):
    """FSP matrices of consecutive taps (Yim et al., CVPR 2017); at least two pairs.
    kd_methods: trained as FitNet (40 epochs on the FSP loss, then the task alone);
    eccv2018: the clipped multi-task rule throughout."""

    Options = FSPOptions
    library_name = "FSPDistillation"
    min_taps = 2

    @property
    def default_gradient_rule(self):
        return "sum" if self.options.normalisation == "kd_methods" else "clip"

    def stages(self):
        if self.options.init_epochs:
            return initialisation_stages(self.options.init_epochs)
        return super().stages()

    def call(self, student_out, teacher_out, labels, training=False):
        loss = fsp_loss(student_out["features"], teacher_out["features"],
                        self.options.normalisation)
        return {"fsp": self.options.weight * loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "weight": hp.Float("weight", 1e-5, 1e-1, sampling="log", default=KD_METHODS_WEIGHT)
        }
