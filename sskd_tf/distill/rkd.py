"""RKD: relational knowledge distillation.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv 1904.05068),
its distance-wise and angle-wise distillation losses: the student matches the teacher's relations between the samples of a
batch, through a distance-wise potential psi_D(t_i, t_j) = ||t_i - t_j|| / mu (mu the
mean distance) and an angle-wise potential psi_A(t_i, t_j, t_k) = <e_ij, e_kj>
(e unit difference vectors), each compared by a Huber loss;
L = lambda_D L_D + lambda_A L_A.

Followed: KD_methods_with_TF `nets/Relation.py: RKD` at commit 9fb5414 and its call
in `nets/ResNet.py`, `RKD(fcs, fct, l=[25, 50])`: the embeddings are the spatial
means of each network's last post-ReLU map (the classifier's input, [B, 256] for
ResNet8/32), each row L2-normalised; lambda_D = 25, lambda_A = 50. Kept quirks:

- distances are sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12)) and mu is their sum
  divided by the count of *positive* distances, + 1e-8. The floor makes every
  distance positive, the diagonal's included (1e-6), so the count is always B^2:
  mu is the mean over all B^2 entries, (B - 1) / B of the paper's mean over pairs
  i != j (the original PyTorch code zeroes the diagonal and averages the positive
  ones; a better option would follow it). The count follows the code, without a
  gradient. In float32 the expanded form leaves a rounding residue of ~1e-7 above
  the floor on some diagonal entries (a distance ~3e-4 instead of 1e-6), as in the
  authors' float32 runs (distances computed from the differences would not);
- e_ij = normalise(x_j - x_i) with TF's l2_normalize (a zero vector stays zero) and
  A_ijk = e_ij . e_ik, over all B^3 triples: the degenerate ones (j = i or k = i,
  where both networks give 0) count in the Huber mean, as the B entries of the
  distance diagonal do (as in the original code; leaving them out would only
  rescale the loss);
- the Huber loss (delta 1) is the mean over all entries of the potentials.

The authors' graph needs no stop-gradient (their teacher is not trainable); here
the teacher's embedding gets `tf.stop_gradient`.

Schedule (`train_w_distill.py`, `op_util.py: Optimizer_w_Distillation`, "RKD" among
the plain multi-task methods): no initialisation stage (`init_epoch` 0); every step
descends CE + weight decay + this loss, Nesterov momentum 0.9. RKD has no variables
of its own.

The registered method `rkd` (`RKD`) reads the last tap of each network, and reports the
two weighted terms apart (`rkd_distance`, `rkd_angle`; their sum is the authors' loss).
"""
import dataclasses

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError

AUTHORS_DISTANCE_WEIGHT = 25.0
AUTHORS_ANGLE_WEIGHT = 50.0
SQUARED_DISTANCE_FLOOR = 1e-12
MEAN_DISTANCE_EPSILON = 1e-8
HUBER_DELTA = 1.0


def huber_loss(student_potential, teacher_potential):
    """Mean over all entries of h(a - b): (a - b)^2 / 2 where |a - b| <= 1, else |a - b| - 1/2."""
    difference = tf.abs(student_potential - teacher_potential)
    return tf.reduce_mean(tf.where(difference <= HUBER_DELTA,
                                   tf.square(difference) / 2.0,
                                   difference - HUBER_DELTA / 2.0))


def distance_potential(embedding):
    """[B, D] -> [B, B] pairwise Euclidean distances divided by their mean over the
    positive ones (all B^2 of them, see the module docstring) + 1e-8."""
    squared_norms = tf.reduce_sum(tf.square(embedding), axis=-1)
    inner_products = tf.matmul(embedding, embedding, transpose_b=True)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * inner_products
    distance = tf.sqrt(tf.maximum(squared, SQUARED_DISTANCE_FLOOR))
    positive = tf.math.count_nonzero(distance > 0.0, dtype=distance.dtype)
    return distance / (tf.reduce_sum(distance) / positive + MEAN_DISTANCE_EPSILON)


def angle_potential(embedding):
    """[B, D] -> [B, B, B]: A[i, j, k] = e_ij . e_ik with e_ij = normalise(x_j - x_i)
    (zero when x_j = x_i)."""
    differences = embedding[None, :, :] - embedding[:, None, :]
    directions = tf.math.l2_normalize(differences, axis=2)
    return tf.matmul(directions, directions, transpose_b=True)


def rkd_terms(student_embedding, teacher_embedding):
    """(Huber(psi_D), Huber(psi_A)), unweighted, of the row-normalised [B, D_S] and [B, D_T]
    embeddings (the widths may differ). The teacher gets no gradient."""
    student_shape, teacher_shape = tuple(student_embedding.shape), tuple(teacher_embedding.shape)
    if len(student_shape) != 2 or len(teacher_shape) != 2:
        raise UserError(f"RKD needs [B, D] embeddings, got student {student_shape} and "
                        f"teacher {teacher_shape}")
    if None not in (student_shape[0], teacher_shape[0]) and student_shape[0] != teacher_shape[0]:
        raise UserError(f"RKD needs the same batch for both networks, got student "
                        f"{student_shape[0]} and teacher {teacher_shape[0]}")
    student = tf.math.l2_normalize(student_embedding, axis=1)
    teacher = tf.math.l2_normalize(tf.stop_gradient(teacher_embedding), axis=1)
    return (huber_loss(distance_potential(student), distance_potential(teacher)),
            huber_loss(angle_potential(student), angle_potential(teacher)))


def rkd_loss(student_embedding, teacher_embedding, distance_weight=AUTHORS_DISTANCE_WEIGHT,
             angle_weight=AUTHORS_ANGLE_WEIGHT):
    """distance_weight * Huber(psi_D) + angle_weight * Huber(psi_A) (`rkd_terms`)."""
    distance_loss, angle_loss = rkd_terms(student_embedding, teacher_embedding)
    return distance_weight * distance_loss + angle_weight * angle_loss


def embedding(feature_map):
    """The mean of a [B, H, W, D] map over its positions, [B, D] (a [B, D] tap as it is):
    what the authors' classifier reads after the last stage."""
    return tf.reduce_mean(feature_map, axis=list(range(1, len(feature_map.shape) - 1)))


@dataclasses.dataclass(frozen=True)
class RKDOptions(MethodOptions):
    distance_weight: float = option(
        AUTHORS_DISTANCE_WEIGHT, "lambda_D, weight of the distance-wise Huber term (the "
        "authors' 25)", at_least=0)
    angle_weight: float = option(
        AUTHORS_ANGLE_WEIGHT, "lambda_A, weight of the angle-wise Huber term (the authors' 50)",
        at_least=0)


@METHODS.register("rkd")
class RKD(DistillationMethod):
    """Relational knowledge distillation (Park, Kim, Lu, Cho, CVPR 2019): the distances
    and angles among a batch's embeddings, the spatial means of each network's last tap,
    compared by a Huber loss, CE + lambda_D L_D + lambda_A L_A summed (KD_methods_with_TF
    `nets/Relation.py`, 25 and 50). Widths may differ; the other taps are not read.
    Departs from the paper where the authors' code does (sskd_tf/distill/rkd.py): the
    mean distance counts the B zero distances of the diagonal, floored at 1e-6."""

    Options = RKDOptions
    library_name = "RKDDistillation"

    def call(self, student_out, teacher_out, labels, training=False):
        distance, angle = rkd_terms(embedding(student_out["features"][-1]),
                                    embedding(teacher_out["features"][-1]))
        return {"rkd_distance": self.options.distance_weight * distance,
                "rkd_angle": self.options.angle_weight * angle}

    @classmethod
    def search_space(cls, hp):
        return {
            "distance_weight": hp.Float("distance_weight", 1.0, 1e3, sampling="log",
                                        default=AUTHORS_DISTANCE_WEIGHT),
            "angle_weight": hp.Float("angle_weight", 1.0, 1e3, sampling="log",
                                     default=AUTHORS_ANGLE_WEIGHT),
        }
