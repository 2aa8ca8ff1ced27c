"""Soft logits: knowledge distillation from temperature-softened outputs.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
arXiv 1503.02531 (2015), section 2: the student matches the teacher's class
probabilities softened by a temperature T, KL(softmax(t / T) || softmax(s / T)).

Followed: KD_methods_with_TF `nets/Response.py` (loss), `nets/ResNet.py` (T = 4)
and `op_util.py` (total = 0.7 CE + 0.3 KD, plain sum of gradients). Differences
from the paper, kept by default and switchable:

- the authors do not multiply the KD term by T^2 (the paper does, end of section 2, so
  that its gradients keep their scale as T changes); `scale_by_t_squared=True`
  restores the paper's scaling;
- earlier revisions of the authors' code used T = 3 (`nets/Distillation.py` era).
"""
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod


def soft_logits_loss(student_logits, teacher_logits, temperature, scale_by_t_squared=False):
    """Batch mean of KL(softmax(t / T) || softmax(s / T)), summed over classes,
    times T^2 when `scale_by_t_squared`. The teacher's logits get no gradient."""
    teacher_log_p = tf.nn.log_softmax(tf.stop_gradient(teacher_logits) / temperature, axis=-1)
    student_log_p = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    loss = tf.reduce_mean(kl)
    return loss * temperature**2 if scale_by_t_squared else loss


@METHODS.register("soft_logits")
class SoftLogits(DistillationMethod):
    """Total loss = (1 - kd_weight) CE + kd_weight KD; `ce_weight` follows `kd_weight`."""

    def __init__(self, temperature=4.0, kd_weight=0.3, scale_by_t_squared=False, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.scale_by_t_squared = bool(scale_by_t_squared)
        self.ce_weight = 1.0 - self.kd_weight

    def call(self, student_out, teacher_out, labels, training=False):
        loss = soft_logits_loss(
            student_out["logits"], teacher_out["logits"], self.temperature, self.scale_by_t_squared
        )
        return {"soft_logits": self.kd_weight * loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "temperature": hp.Float("temperature", 1.0, 8.0, default=4.0),
            "kd_weight": hp.Float("kd_weight", 0.1, 0.9, default=0.3),
        }
