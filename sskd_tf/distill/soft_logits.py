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

Options beyond the authors' (off by default, so the defaults give their numbers):
`logit_standardization=True` Z-scores both networks' logits before the temperature (Sun et
al., CVPR 2024, `logit_standardization.py`), and `ce_weight` sets the task loss's weight
apart from `kd_weight` (None: 1 - kd_weight). The logit-standardization paper's KD + LS
(its `tools/train.py --logit-stand --base-temp 2 --kd-weight 9`, CE weight 0.1, mdistiller's
T^2 factor) is therefore `--method=soft_logits --recipe=crd2020 --method_options=
logit_standardization=True,temperature=2,kd_weight=9,ce_weight=0.1,scale_by_t_squared=True`.
"""
import dataclasses
import typing

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.logit_standardization import standardize_logits
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError


def soft_logits_loss(student_logits, teacher_logits, temperature, scale_by_t_squared=False):
    """Batch mean of KL(softmax(t / T) || softmax(s / T)), summed over classes,
    times T^2 when `scale_by_t_squared`. The teacher's logits get no gradient."""
    teacher_log_p = tf.nn.log_softmax(tf.stop_gradient(teacher_logits) / temperature, axis=-1)
    student_log_p = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    loss = tf.reduce_mean(kl)
    return loss * temperature**2 if scale_by_t_squared else loss


@dataclasses.dataclass(frozen=True)
class SoftLogitsOptions(MethodOptions):
    temperature: float = option(4.0, "softmax temperature T (the authors' 4)", at_least=1e-12)
    kd_weight: float = option(0.3, "weight of the KD term; the task loss gets 1 - kd_weight",
                              at_least=0)
    scale_by_t_squared: bool = option(False, "multiply the KD term by T^2 (the paper; the "
                                             "authors do not)")
    logit_standardization: bool = option(
        False, "Z-score both networks' logits (unbiased std) before the temperature (Sun et "
        "al., CVPR 2024); off: the authors' loss")
    ce_weight: typing.Optional[float] = option(
        None, "weight of the task loss; None: 1 - kd_weight (the authors')", at_least=0)


@METHODS.register("soft_logits")
class SoftLogits(DistillationMethod):
    """Hinton's soft logits, KL(teacher || student) at `temperature`, weighted by
    `kd_weight`; the task loss weighs 1 - kd_weight (or `ce_weight`). With
    `logit_standardization`, on Z-scored logits. Reads the networks' outputs (logits)."""

    Options = SoftLogitsOptions
    library_name = "SoftLogitsDistillation"
    reads = "logits"
    min_taps = 0

    def __init__(self, name=None, **options):
        super().__init__(name=name, **options)
        if self.options.ce_weight is None and self.options.kd_weight > 1:
            raise UserError(f"{self.name}: kd_weight={self.options.kd_weight} leaves the task "
                            "loss a negative weight (1 - kd_weight); give ce_weight too")

    @property
    def task_weight(self):
        if self.options.ce_weight is not None:
            return self.options.ce_weight
        return 1.0 - self.options.kd_weight

    def call(self, student_out, teacher_out, labels, training=False):
        student, teacher = student_out["logits"], teacher_out["logits"]
        if self.options.logit_standardization:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        loss = soft_logits_loss(student, teacher, self.options.temperature,
                                self.options.scale_by_t_squared)
        return {"soft_logits": self.options.kd_weight * loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "temperature": hp.Float("temperature", 1.0, 8.0, default=4.0),
            "kd_weight": hp.Float("kd_weight", 0.1, 0.9, default=0.3),
        }
