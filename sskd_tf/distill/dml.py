"""DML: deep mutual learning, the loss and the registered method "dml" (`MutualLearning`).

Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018 (arXiv 1706.00384). No fixed
teacher: a peer network trains beside the student, each on its cross-entropy plus the
divergence of its predictions from the other's.

Followed: KD_methods_with_TF `nets/Response.py` (`DML`), `nets/ResNet.py` (the peer),
`op_util.py` (`Optimizer_w_DML`) and `train_w_distill.py` (the loop). The loss,
`mutual_learning_loss`: [mean_b KL(p_peer || p_student) + mean_b KL(p_student || p_peer)] / 2
with p = softmax(logits), no temperature and no stop-gradient: the same scalar enters both
networks' losses and each differentiates it with respect to its own variables (through both
KL terms).

The authors' training step, as their code runs it (the spec of the step to implement):

- The peer is the 'Teacher' scope: a ResNet32 trained from scratch (its pretrained weights
  are not loaded for DML), the authors' initialisers, weight decay 5e-4.
- `Optimizer_w_DML` returns (peer op, student op), but `train_w_distill.py` unpacks them as
  `train_op, teacher_train_op`: the names are swapped, so its loop, which runs
  `teacher_train_op` first and `train_op` second, updates the **student first** and the peer
  second, on the same images. Each `sess.run` evaluates the whole graph again, so:
  1. student run: a fresh random augmentation of the batch; both networks forward; loss
     CE_s + wd_s + DML(z_s, z_p), with the peer's logits from its parameters before this
     step; gradients for the student's variables only; the student's BN moving averages
     updated; the global step incremented (only this op increments it).
  2. peer run: another fresh augmentation of the same images; both networks forward, the
     student with its just-updated parameters; loss CE_p + wd_p + DML(z_s, z_p); gradients for
     the peer's variables only. The logged loss is this one; the logged training accuracy is
     the updated student's on this augmentation.
- BN modes: the student's follows `is_training` (training mode, batch statistics, in both
  runs; its moving averages are updated in its own run only). The peer's BN runs with
  `teacher_is_training = not is_training`: during both training runs it is in *inference*
  mode, normalising with its moving statistics, and its moving-average updates are
  conditional on the same flag, so they never happen (in validation, where the flag flips,
  only the student's accuracy is evaluated and the peer is not run). The peer's moving
  statistics therefore stay at their initial mean 0 and variance 1: its BN layers are fixed
  affine maps gamma * x / sqrt(1 + 1e-5) + beta, gamma and beta still trained; the peer
  trains as an unnormalised ResNet32.
- Weight decay: each network its own, 5e-4 sum(w^2) / 2 over its conv kernels, dense kernel
  and bias, BN gammas and betas.
- One `MomentumOptimizer` (learning rate 0.1, momentum 0.9, Nesterov) applies both updates;
  its momentum slots are per variable, so it is two optimizers with the same hyperparameters.
  Learning rate 0.1, times 0.1 at epochs 30, 60 and 80 of 100 (no initialisation stage);
  epoch = floor(global_step * 128 / 50000). The peer's run sees the step already incremented,
  so its learning rate is the schedule's at the next step (different only on the step that
  crosses a decay epoch).

Recommendation for the faithful default of the peer's BN: keep it, i.e. call the peer with
`training=False` in both runs (Keras then normalises with the moving statistics and never
updates them, while gamma and beta keep training), and offer the paper's behaviour, the peer
in training mode like the student, as an option. The authors' 73.27 / 73.47 were obtained
with the quirk.
"""
import dataclasses

import keras
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.stages import Stage, Update
from sskd_tf.errors import UserError

# The peer's batch-norm mode in both updates of a step: "inference" (the authors' quirk,
# `teacher_is_training = not is_training`: its moving statistics never move) or "training"
# (the paper's: batch statistics, its moving statistics updated in its own update).
PEER_BATCH_NORM = ("inference", "training")


def mutual_learning_loss(student_logits, peer_logits):
    """[mean_b KL(p_peer || p_student) + mean_b KL(p_student || p_peer)] / 2, p the softmax of
    the logits over the last axis; symmetric in its arguments, both receive a gradient."""
    if tuple(student_logits.shape[1:]) != tuple(peer_logits.shape[1:]):
        raise UserError(f"DML: the student's logits {tuple(student_logits.shape[1:])} and the "
                        f"peer's {tuple(peer_logits.shape[1:])} must have the same classes")
    student_log_p = tf.nn.log_softmax(student_logits)
    peer_log_p = tf.nn.log_softmax(peer_logits)

    def mean_kl(log_p, log_q):
        return tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1))

    return (mean_kl(peer_log_p, student_log_p) + mean_kl(student_log_p, peer_log_p)) / 2.0


def peer_cross_entropy(labels, peer_logits):
    """The peer's task loss, the batch mean of the sparse cross-entropy of its logits (the
    authors' `softmax_cross_entropy` of `Logits_tch`)."""
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        labels, peer_logits, from_logits=True))


@dataclasses.dataclass(frozen=True)
class DMLOptions(MethodOptions):
    weight: float = option(1.0, "weight of the mutual term in both networks' losses (the "
                           "authors' 1)", at_least=0)
    peer_batch_norm: str = option(
        "inference", "the peer's batch norm while it trains: inference (the authors' code: "
        "its moving statistics stay at their initial values) or training (the paper's: "
        "batch statistics, moving statistics updated in its own update)",
        choices=PEER_BATCH_NORM)


@METHODS.register("dml")
class MutualLearning(DistillationMethod):
    """Deep mutual learning (Zhang et al., CVPR 2018): the teacher network is a peer that
    trains from its initialisation beside the student. Each step, as the authors' code runs
    it, updates the student first (CE + weight decay + the symmetric KL against the peer's
    logits) and then the peer, on a second augmentation of the batch and the updated
    student's logits (its CE + its weight decay + the same KL); the peer's batch norm in
    inference mode in both (`peer_batch_norm`), its learning rate the next step's."""

    Options = DMLOptions
    library_name = "DMLDistillation"
    reads = "logits"
    min_taps = 0
    pretrained_teacher = False

    def stages(self):
        # The authors' loop: the student's op, then the peer's on a fresh augmentation (view 1),
        # which does not advance the global step. Quirk kept by default: the peer's BN runs
        # with `not is_training`, in inference mode in both updates, so its moving statistics
        # never move (`peer_batch_norm="training"`: the paper's behaviour).
        peer_training = self.options.peer_batch_norm == "training"
        student = Update(trains=("student",), rule=self.gradient_rule,
                         teacher_training=peer_training)
        peer = Update(trains=("teacher",), task=False, distillation="peer_loss", view=1,
                      counts_step=False, teacher_training=peer_training)
        return (Stage(updates=(student, peer)),)

    def call(self, student_out, teacher_out, labels, training=False):
        return {"dml": self.options.weight * mutual_learning_loss(student_out["logits"],
                                                                  teacher_out["logits"])}

    def peer_loss(self, student_out, teacher_out, labels, training=False):
        """The peer's update: its cross-entropy and the mutual loss."""
        return {"peer_ce": peer_cross_entropy(labels, teacher_out["logits"]),
                "peer_dml": self.options.weight * mutual_learning_loss(student_out["logits"],
                                                                       teacher_out["logits"])}

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 1e-1, 1e1, sampling="log", default=1.0)}
