"""AT: attention transfer.

Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017
(arXiv 1612.03928), eq. 2: L = CE + beta/2 sum_j || Q_S^j/||Q_S^j|| - Q_T^j/||Q_T^j|| ||_p,
with the activation-based attention map Q = mean over channels of |A|^2 (section 3.1).

Followed: KD_methods_with_TF `nets/Multiple.py` and `op_util.py` (beta = 1e3, the
distance is the mean over batch and positions of the squared difference of the
L2-normalised flattened maps, as the original AT code; total = CE + AT, plain
sum of gradients). The authors' channel regressor for taps of different widths
maps the student to its own width (a no-op); attention maps do not depend on the
width, so this port has no regressor.
"""
import dataclasses

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError


def attention_map(feature_map):
    """[B, H, W, D] -> [B, H*W]: channel mean of squared activations, L2-normalised
    over positions (zero maps stay zero)."""
    energy = tf.reduce_mean(tf.square(feature_map), axis=-1)
    flat = tf.reshape(energy, [tf.shape(energy)[0], -1])
    return tf.math.l2_normalize(flat, axis=1)


def attention_transfer_loss(student_features, teacher_features, beta):
    """beta/2 times the sum over taps of mean((Q_S - Q_T)^2); the teacher gets no gradient."""
    if len(student_features) != len(teacher_features):
        raise UserError(
            f"the student has {len(student_features)} taps and the teacher {len(teacher_features)}"
        )
    per_tap = []
    for tap, (student, teacher) in enumerate(zip(student_features, teacher_features)):
        if tuple(student.shape[1:3]) != tuple(teacher.shape[1:3]):
            raise UserError(
                f"tap {tap}: attention maps need equal spatial sizes, got student "
                f"{tuple(student.shape[1:3])} and teacher {tuple(teacher.shape[1:3])}"
            )
        difference = attention_map(student) - attention_map(tf.stop_gradient(teacher))
        per_tap.append(tf.reduce_mean(tf.square(difference)))
    return beta / 2.0 * tf.add_n(per_tap)


@dataclasses.dataclass(frozen=True)
class AttentionOptions(MethodOptions):
    beta: float = option(1e3, "weight of the attention term (the authors' 1e3)", at_least=0)


@METHODS.register("at")
class AttentionTransfer(DistillationMethod):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): spatial attention maps
    of each pair compared; widths may differ, spatial sizes must match."""

    Options = AttentionOptions
    library_name = "AttentionDistillation"

    def call(self, student_out, teacher_out, labels, training=False):
        loss = attention_transfer_loss(student_out["features"], teacher_out["features"],
                                       self.options.beta)
        return {"attention": loss}

    @classmethod
    def search_space(cls, hp):
        return {"beta": hp.Float("beta", 1e1, 1e5, sampling="log", default=1e3)}
