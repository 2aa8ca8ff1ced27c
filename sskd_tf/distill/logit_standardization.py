"""Logit standardization: the Z-score pre-processing of logits for logit-based distillation.

Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024
(arXiv 2403.01427): each network's logits are replaced by their Z-score before the
temperature softmax, so that the student matches the teacher's logit relations rather than
their range.

Followed: sunshangquan/logit-standardization-KD `mdistiller/distillers/KD.py` and `DKD.py`
(`normalize`, applied to the student and to the teacher separately, on the raw logits, before
either divides by T; the cross-entropy keeps the raw student logits) and `tools/train.py`
(`--logit-stand --base-temp 2 --kd-weight 9`), whose settings are:

- KD: `soft_logits_loss(standardize_logits(s), standardize_logits(t), 2,
  scale_by_t_squared=True)` (mdistiller's KD multiplies by T^2), KD weight 9, CE weight 0.1
  (the repository's own `cfg.py` defaults: T 2, KD 9, CE 0.1 even without the flag);
- DKD: `dkd_loss(standardize_logits(s), standardize_logits(t), labels, 9 alpha, 9 beta, 2)`:
  `--kd-weight` multiplies both of the pair's alpha and beta, T becomes 2, CE weight 1 and the
  warm-up (20 epochs) unchanged: res32x4 -> res8x4 is alpha 9, beta 72, T 2. The per-pair
  logs (`logs/DKD/<pair>,T,multiplier[,BETA].txt`) show other choices, e.g. vgg13 -> vgg8 ran
  `2,15,2.0`: T 2, multiplier 15, BETA 2.0 where its config says 6.0.
"""
import tensorflow as tf

from sskd_tf.errors import UserError

EPSILON = 1e-7


def standardize_logits(logits):
    """(z - mean) / (1e-7 + std) over the last axis, the std unbiased (divided by C - 1), as
    torch's `Tensor.std`; gradients flow through the mean and the std. A constant row gives
    zeros, and its gradient through the std is zero (torch's `std_backward` and TF's `SqrtGrad`
    both give 0 there), through the mean (I - 1/C) / 1e-7."""
    num_classes = logits.shape[-1]
    if num_classes is not None and num_classes < 2:
        raise UserError(f"logit standardization needs at least 2 classes, got {num_classes}")
    centred = logits - tf.reduce_mean(logits, axis=-1, keepdims=True)
    count = tf.cast(tf.shape(logits)[-1], logits.dtype)
    std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=-1, keepdims=True) / (count - 1))
    return centred / (EPSILON + std)
