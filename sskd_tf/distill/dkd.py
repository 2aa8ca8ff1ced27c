"""DKD: decoupled knowledge distillation.

Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022 (arXiv 2203.08679),
section 3: KD = TCKD + (1 - p_t) NCKD, p_t the teacher's target probability, of which DKD
weights the two parts freely, DKD = alpha TCKD + beta NCKD. TCKD is the KL divergence between
the teacher's and the student's binary (target, non-target) probabilities, NCKD the one
between their distributions over the non-target classes.

Followed: megvii-research/mdistiller `mdistiller/distillers/DKD.py` (`dkd_loss`,
`DKD.forward_train`) and `mdistiller/engine/trainer.py`. What their code does, kept here:

- the non-target bin is the sum of the other classes' softmax probabilities (`cat_mask`),
  not 1 - p_target, and TCKD takes the log of these two sums (`torch.log(pred_student)`), with
  no clamp: a student whose non-target mass underflows (in float32, a target lead of about
  90 T) makes TCKD infinite;
- NCKD masks the target with `z / T - 1000 onehot`, not -inf: the teacher keeps mass on its
  target only where that logit leads by more than about 900 T; the student side is a
  log_softmax of the masked logits, the teacher side a softmax;
- `F.kl_div(log_q, p, size_average=False)`: sum of xlogy(p, p) - p log_q over the batch and
  the bins, divided by the batch size, times T^2;
- the teacher's logits carry no gradient (`torch.no_grad()` around the teacher);
- the loss is multiplied by min(epoch / warmup, 1) with epochs counted from 1
  (`BaseTrainer.train`), constant within an epoch: `dkd_warmup_factor`.

Training (mdistiller `mdistiller/engine/cfg.py` and `configs/cifar100/dkd/*.yaml`):
total = 1.0 CE + dkd_warmup_factor * DKD, alpha 1, T 4, warm-up 20 epochs, and beta per pair:
res32x4 -> res8x4 8, res56 -> res20 2, res110 -> res32 2, vgg13 -> vgg8 6,
wrn_40_2 -> wrn_16_2 6, wrn_40_2 -> wrn_40_1 6, vgg13 -> MobileNetV2 6,
res32x4 -> ShuffleV1 8, res32x4 -> ShuffleV2 8, ResNet50 -> MobileNetV2 8,
wrn_40_2 -> ShuffleV1 8; RepDistiller's recipe otherwise (lr 0.01 for MobileNetV2 and
ShuffleNet students). With logit standardization see `logit_standardization.py`.

The method `dkd` (class `DKD`) is this loss with those settings: alpha 1, beta 8 (the
res32x4 -> res8x4 value; other pairs: `--method_options=beta=...` from the list above),
T 4, a 20-epoch warm-up read from the step's `stage_epoch`, CE weight 1, and
RepDistiller's recipe (`crd2020`) unless another is given. `logit_standardization=True`
standardizes both networks' logits first (the anchors' DKD + LS also sets alpha 9,
beta 72, temperature 2: see `logit_standardization.py`).
"""
import dataclasses

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.logit_standardization import standardize_logits
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError

TARGET_MASK_VALUE = 1000.0


def _check_logits(student_logits, teacher_logits, labels):
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise UserError(f"DKD needs student and teacher logits of one shape, got "
                        f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    batch, label_count = student_logits.shape[0], labels.shape.num_elements()
    if batch is not None and label_count is not None and batch != label_count:
        raise UserError(f"DKD needs one label per row of logits, got {label_count} labels for "
                        f"{batch} rows")


def _target_and_others(probabilities, target_mask):
    """[B, C] -> [B, 2]: the target's probability and the sum of the others'."""
    target = tf.reduce_sum(probabilities * target_mask, axis=-1)
    others = tf.reduce_sum(probabilities * (1.0 - target_mask), axis=-1)
    return tf.stack([target, others], axis=-1)


def _summed_kl(teacher_probabilities, student_log_probabilities):
    """torch's `kl_div(log_q, p, size_average=False)`: the sum of xlogy(p, p) - p log_q."""
    return tf.reduce_sum(tf.math.xlogy(teacher_probabilities, teacher_probabilities)
                         - teacher_probabilities * student_log_probabilities)


def dkd_terms(student_logits, teacher_logits, labels, temperature):
    """(TCKD, NCKD), each summed over the batch, divided by its size and times T^2.
    `labels`: the integer class of each row; the teacher's logits get no gradient."""
    student_logits, labels = tf.convert_to_tensor(student_logits), tf.convert_to_tensor(labels)
    teacher_logits = tf.stop_gradient(tf.convert_to_tensor(teacher_logits))
    _check_logits(student_logits, teacher_logits, labels)
    target_mask = tf.one_hot(tf.reshape(labels, [-1]), tf.shape(student_logits)[-1],
                             dtype=student_logits.dtype)
    student_scaled = student_logits / temperature
    teacher_scaled = teacher_logits / temperature
    scale = temperature ** 2 / tf.cast(tf.shape(student_logits)[0], student_logits.dtype)

    student_bins = _target_and_others(tf.nn.softmax(student_scaled, axis=-1), target_mask)
    teacher_bins = _target_and_others(tf.nn.softmax(teacher_scaled, axis=-1), target_mask)
    tckd = _summed_kl(teacher_bins, tf.math.log(student_bins)) * scale

    mask = TARGET_MASK_VALUE * target_mask
    nckd = _summed_kl(tf.nn.softmax(teacher_scaled - mask, axis=-1),
                      tf.nn.log_softmax(student_scaled - mask, axis=-1)) * scale
    return tckd, nckd


def dkd_loss(student_logits, teacher_logits, labels, alpha, beta, temperature):
    """alpha TCKD + beta NCKD (mdistiller `dkd_loss`), before the warm-up factor."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup_factor(epoch, warmup):
    """min((epoch + 1) / warmup, 1) as float32, for the 0-based `epoch` of sskd_tf
    (`EpochCut.epoch_of`): mdistiller's min(epoch / warmup, 1) with its epochs counted from 1,
    so the first epoch already weighs 1 / warmup and epoch `warmup - 1` (0-based) weighs 1."""
    if not warmup > 0:
        raise UserError(f"the DKD warm-up must be a positive number of epochs, got {warmup!r}")
    return tf.minimum((tf.cast(epoch, tf.float32) + 1.0) / float(warmup), 1.0)


@dataclasses.dataclass(frozen=True)
class DKDOptions(MethodOptions):
    alpha: float = option(1.0, "weight of TCKD, the target-class term (mdistiller's 1)",
                          at_least=0)
    beta: float = option(8.0, "weight of NCKD, the non-target term (mdistiller's 8 for "
                              "res32x4 -> res8x4; its configs/cifar100/dkd/ give each pair's)",
                         at_least=0)
    temperature: float = option(4.0, "softmax temperature T (mdistiller's 4)", at_least=1e-12)
    warmup: int = option(20, "epochs over which the DKD term ramps up linearly, min((epoch + 1) "
                             "/ warmup, 1) with 0-based epochs (mdistiller's 20); 0: none",
                         at_least=0)
    logit_standardization: bool = option(
        False, "Z-score both networks' logits before the loss (Sun et al., CVPR 2024)")
    ce_weight: float = option(1.0, "weight of the task loss (mdistiller's CE_WEIGHT 1.0)",
                              at_least=0)


@METHODS.register("dkd")
class DKD(DistillationMethod):
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022): alpha TCKD + beta NCKD at
    `temperature`, times the warm-up factor of the epoch (of its stage), beside the task
    loss at `ce_weight`; with `logit_standardization`, on Z-scored logits (Sun et al., CVPR
    2024). Reads the networks' outputs (logits) and the labels."""

    Options = DKDOptions
    library_name = "DKDDistillation"
    reads = "logits"
    min_taps = 0
    recipe = "crd2020"
    step_inputs = ("stage_epoch",)

    @property
    def task_weight(self):
        return self.options.ce_weight

    def warmup_factor(self, stage_epoch):
        """The DKD term's factor at the 0-based `stage_epoch` (1 without warm-up)."""
        if not self.options.warmup:
            return tf.constant(1.0)
        return dkd_warmup_factor(stage_epoch, self.options.warmup)

    def call(self, student_out, teacher_out, labels, training=False, stage_epoch=None):
        student, teacher = student_out["logits"], teacher_out["logits"]
        if self.options.logit_standardization:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        loss = dkd_loss(student, teacher, labels, self.options.alpha, self.options.beta,
                        self.options.temperature)
        factor = tf.constant(1.0) if stage_epoch is None else self.warmup_factor(stage_epoch)
        return {"dkd": tf.cast(factor, loss.dtype) * loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "beta": hp.Float("beta", 1.0, 16.0, sampling="log", default=8.0),
            "temperature": hp.Float("temperature", 1.0, 8.0, default=4.0),
        }
