"""MHGD: multi-head graph distillation, its mathematics and the registered method "mhgd"
(`MultiHeadGraphDistillation`).

Lee, Song, "Graph-based Knowledge Distillation by Multi-head Attention Network", BMVC 2019
(arXiv 1907.02226). Each stage's feature map is compressed to its leading right singular
vector; a multi-head attention network, trained beforehand on the teacher alone to predict
the vector of a stage from those of the previous stage over the batch, embeds the relation
of every sample to every other one, and the student learns the teacher's embedded relations.

Followed: KD_methods_with_TF `nets/Relation.py` (`MHGD`, `Attention_head`, `Estimator`,
`drop_head`, `kld_loss`), `nets/SVP.py` (`SVD_eid`, `gradient_svd`, `Align_rsv`),
`op_util.py` (`Optimizer_w_MHGD`) and `train_w_distill.py`. Read with the authors' scopes:
layers without bias or activation unless stated, kernels by variance scaling on fan-out
(truncated normal), BN with scale, epsilon 1e-5, decay 0.9 (fused, so the moving variance
follows the Bessel-corrected batch variance: `common.SlimBatchNormalization`).

Pieces, with the quirks kept:

- `stage_vectors`: per stage, the map [B, H, W, D] is read as [B, HW, D] and decomposed as
  KD-EID does (`linalg.decompose(route="eid")`: the Gram route with the authors' backward
  formula, twice the true gradient when D <= HW, its own formula when D > HW, and no gradient
  at all for maps with 2/3 < HW/D < 3/2). The first vector of the teacher and the first four
  of the student are kept, non-finite entries zeroed and each column L2-normalised
  (`kd_svd.leading_components`); the student keeps the one of its four with the largest
  |cosine| to the teacher's, times that cosine's sign (`kd_svd.align_to_teacher`). This is
  KD-EID's use exactly, without its singular-value weighting. The teacher's sign is whatever
  the eigensolver gives (the loss depends on it, so the faithful backend is "linalg_svd").
- `AttentionHead` (per consecutive pair j-1, j, width D2 = (D_j + D_(j-1)) // 2, 8 heads):
  senders BN(V_j W_S), receivers BN(V_(j-1) W_R), both [B, 8 D2] read as [B, D2, 8], so the
  head is the fastest index of the units; G[h, a, b] = sum_d S[a, d, h] R[b, d, h].
- `Estimator` (initialisation only): softmax over b of the attention with batch statistics,
  times the head-drop mask (`head_drop_mask`: per head h and sender sample a, kept where its
  N(0, 1) noise exceeds the mean over the heads, about half of them; applied after the
  softmax, kept rows not renormalised); X = relu(BN(V_(j-1) W0)), W0 to D2 units; per head
  the mixed rows sum_b G[h, a, b] X[b], concatenated head-major ([B, 8 D2], unit h D2 + d:
  the head is the *slowest* index here, unlike in the attention), then a dense layer with
  bias to D_j, L2-normalised: the estimate of V_j.
- `MultiHeadGraph.estimation_loss`: sum over pairs of mean_b (1 - V_hat . V_T,j), on the
  teacher's vectors, attention and estimator BN in training mode (their moving statistics
  updated). Its weight decay, `MultiHeadGraph.init_weight_decay`: 5e-4 sum(v^2), not halved,
  over the variables of the authors' 'MHA' collection whose names start with g, w or b:
  every trainable variable of the attention and estimator networks (dense kernels, the
  estimator's output bias, BN gammas and betas); not the moving statistics.
- `MultiHeadGraph.transfer_loss`: sum over pairs of `kl_over_batch(tanh(G_S), tanh(G_T))`,
  both attentions on the BN moving statistics (`reuse=True` leaves `is_training` at its
  default False). The divergence is KL(student || teacher), softmax over the receiver
  samples, *summed* over heads and sender samples. The teacher's side is a constant; the
  attention's variables still receive a gradient through G_S: the main stage must not apply
  it (the authors' optimizer lists the student's variables only).

The authors' schedule (CIFAR-100, 50000 images, batch 128, SGD with Nesterov momentum 0.9,
one optimizer whose momentum slots are per variable):
1. Epochs 0-39 (15625 steps): only the attention and estimator networks train, on
   `estimation_loss + init_weight_decay`, learning rate 0.1; their BN in training mode with
   the moving-average updates; the student is untouched; the global step counts these steps.
2. Epochs 40-139: the student trains on CE + its weight decay (5e-4 sum/2) + MHGD with the
   clipped rule g = g_wd + g_ce + clip_by_norm(g_mhgd, ||g_ce|| sigmoid(epoch - 40)) per
   variable (g_wd + g_ce where the MHGD loss does not reach), sigmoid(x) = 1/(1 + e^-x)
   replaced by 1.0 above 1 - 1e-8, epoch = floor(global_step * 128 / 50000) counting stage 1,
   so the factor is 0.5 in epoch 40; learning rate 0.1, times 0.1 at epochs 70, 100 and 120;
   the attention frozen on its stage-1 moving statistics (its update ops are left out), the
   teacher in inference mode. Nothing is reset between the stages.
"""
import dataclasses

import keras
import tensorflow as tf

from sskd_tf import linalg
from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.kd_svd import align_to_teacher, leading_components
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.stages import Stage, Update
from sskd_tf.errors import UserError
from sskd_tf.linalg import BACKENDS
from sskd_tf.models import common

NUM_HEADS = 8
TEACHER_COMPONENTS = 1
STUDENT_COMPONENTS = 4
AUTHORS_INIT_EPOCHS = 40
INIT_WEIGHT_DECAY = 5e-4
# The backward passes of the student's decompositions a user chooses (those of KD-SVD).
GRADIENTS = ("original", "exact")


def check_taps(student_maps, teacher_maps):
    """Raise a UserError unless the taps pair one to one as [B, H, W, D] maps of equal width."""
    if len(student_maps) != len(teacher_maps):
        raise UserError(f"MHGD: the student has {len(student_maps)} taps and the teacher "
                        f"{len(teacher_maps)}; they must be paired one to one")
    if len(student_maps) < 2:
        raise UserError("MHGD relates consecutive taps: give at least 2 feature maps")
    for tap, (student, teacher) in enumerate(zip(student_maps, teacher_maps)):
        if student.shape.rank != 4 or teacher.shape.rank != 4 or student.shape[-1] != teacher.shape[-1]:
            raise UserError(f"MHGD tap {tap}: student map {tuple(student.shape[1:])} and teacher map "
                            f"{tuple(teacher.shape[1:])} must be [H, W, D] maps of the same width D")


def singular_vectors(feature_map, components, gradient="original", backend="linalg_svd",
                     signs_matter=True):
    """[B, H, W, D] -> [B, D, n]: the first n = `components` right singular vectors of the map
    read as [B, HW, D] by `SVD_eid` (route "eid"), non-finite entries zeroed, unit columns."""
    _, height, width, depth = feature_map.shape
    s, _, v = linalg.decompose(tf.reshape(feature_map, [-1, height * width, depth]), route="eid",
                               gradient=gradient, backend=backend, components=components,
                               signs_matter=signs_matter)
    return leading_components(s, v, components)[1]


def teacher_vectors(teacher_maps, backend="linalg_svd"):
    """The teacher's first singular vector of every map, [B, D] each, without gradient."""
    return [singular_vectors(tf.stop_gradient(teacher), TEACHER_COMPONENTS, backend=backend)[:, :, 0]
            for teacher in teacher_maps]


def stage_vectors(student_maps, teacher_maps, gradient="original", backend="linalg_svd"):
    """(student vectors, teacher vectors), [B, D] per stage: the teacher's first vector and the
    student's of its first four most parallel to it, sign-aligned. Gradients reach the
    student's maps through `gradient` (one of `linalg.GRADIENTS`)."""
    check_taps(student_maps, teacher_maps)
    teachers = teacher_vectors(teacher_maps, backend)
    students = []
    for student, teacher in zip(student_maps, teachers):
        student_v = singular_vectors(student, STUDENT_COMPONENTS, gradient, backend, signs_matter=False)
        students.append(align_to_teacher(student_v, teacher[:, :, None])[:, :, 0])
    return students, teachers


def head_drop_mask(num_heads, batch, seed, dtype="float32"):
    """`drop_head`'s mask [num_heads, batch, 1]: 1 where the head's N(0, 1) noise exceeds the
    mean over the heads of that sample, else 0. seed: an int or a `keras.random.SeedGenerator`
    (the same seed replays the same masks)."""
    noise = keras.random.normal((num_heads, batch, 1), seed=seed, dtype=dtype)
    return tf.cast(noise > tf.reduce_mean(noise, axis=0, keepdims=True), dtype)


def kl_over_batch(student, teacher):
    """`kld_loss`: sum over every entry of softmax(student) (log softmax(student) - log
    softmax(teacher)), the softmax over the last axis."""
    return tf.reduce_sum(tf.nn.softmax(student) * (tf.nn.log_softmax(student) - tf.nn.log_softmax(teacher)))


def _dense(units, name, dtype, use_bias=False):
    return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=common.variance_scaling("fan_out"),
                              dtype=dtype, name=name)


def _batch_norm(name, dtype):
    return common.SlimBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class AttentionHead(keras.layers.Layer):
    """`Attention_head` of one stage pair: (senders [B, D_j], receivers [B, D_(j-1)]) ->
    G [num_heads, B, B], G[h, a, b] = sum_d S[a, d, h] R[b, d, h] with S = BN(senders W_S) and
    R = BN(receivers W_R) read as [B, width, num_heads]."""

    def __init__(self, width, num_heads=NUM_HEADS, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        self.num_heads = int(num_heads)
        self.sender = _dense(self.width * self.num_heads, "sender", self.dtype_policy)
        self.sender_norm = _batch_norm("sender_norm", self.dtype_policy)
        self.receiver = _dense(self.width * self.num_heads, "receiver", self.dtype_policy)
        self.receiver_norm = _batch_norm("receiver_norm", self.dtype_policy)

    def build(self, senders_shape, receivers_shape):
        for dense, norm, shape in ((self.sender, self.sender_norm, senders_shape),
                                   (self.receiver, self.receiver_norm, receivers_shape)):
            dense.build(shape)
            norm.build(dense.compute_output_shape(shape))

    def _heads(self, dense, norm, vectors, training):
        return tf.reshape(norm(dense(vectors), training=training), [-1, self.width, self.num_heads])

    def call(self, senders, receivers, training=False):
        sent = self._heads(self.sender, self.sender_norm, senders, training)
        received = self._heads(self.receiver, self.receiver_norm, receivers, training)
        return tf.einsum("adh,bdh->hab", sent, received)


class Estimator(keras.layers.Layer):
    """`Estimator` of one stage pair: (previous vectors [B, D_(j-1)], attention [h, B, B]) ->
    the unit estimate [B, output_width] of the stage's vectors (module docstring).
    head_mask: [h, B, 1], or None to draw `head_drop_mask` from this layer's seed generator."""

    def __init__(self, width, output_width, num_heads=NUM_HEADS, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        self.num_heads = int(num_heads)
        self.hidden = _dense(self.width, "hidden", self.dtype_policy)
        self.hidden_norm = _batch_norm("hidden_norm", self.dtype_policy)
        self.estimate = _dense(int(output_width), "estimate", self.dtype_policy, use_bias=True)
        self.seed_generator = keras.random.SeedGenerator(seed, name="head_drop_seed")

    def build(self, previous_shape, attention_shape):
        del attention_shape
        self.hidden.build(previous_shape)
        self.hidden_norm.build((None, self.width))
        self.estimate.build((None, self.width * self.num_heads))

    def call(self, previous, attention, head_mask=None, training=True):
        if head_mask is None:
            head_mask = head_drop_mask(self.num_heads, tf.shape(attention)[1], self.seed_generator,
                                       attention.dtype)
        weights = tf.nn.softmax(attention) * head_mask
        hidden = tf.nn.relu(self.hidden_norm(self.hidden(previous), training=training))
        mixed = tf.einsum("hab,bd->ahd", weights, hidden)
        return tf.math.l2_normalize(self.estimate(tf.reshape(mixed, [-1, self.num_heads * self.width])),
                                    axis=-1)


class MultiHeadGraph(keras.layers.Layer):
    """The attention and estimator networks of every consecutive pair of stages of widths
    `stage_widths` (D2 = (D_j + D_(j-1)) // 2), built on construction. seed: the head-drop
    masks' (pair j's estimator draws from seed + j), None for a random one."""

    def __init__(self, stage_widths, num_heads=NUM_HEADS, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stage_widths = tuple(int(width) for width in stage_widths)
        if len(self.stage_widths) < 2:
            raise UserError("MHGD relates consecutive taps: give at least 2 stage widths")
        self.attentions, self.estimators = [], []
        for pair, (previous, width) in enumerate(zip(self.stage_widths, self.stage_widths[1:]), start=1):
            hidden = (width + previous) // 2
            attention = AttentionHead(hidden, num_heads, dtype=self.dtype_policy, name=f"attention{pair}")
            attention.build((None, width), (None, previous))
            estimator = Estimator(hidden, width, num_heads, seed=None if seed is None else seed + pair,
                                  dtype=self.dtype_policy, name=f"estimator{pair}")
            estimator.build((None, previous), (num_heads, None, None))
            self.attentions.append(attention)
            self.estimators.append(estimator)
        self.built = True

    def _check_vectors(self, vectors):
        widths = tuple(v.shape[-1] for v in vectors)
        if widths != self.stage_widths:
            raise UserError(f"MHGD: stage vectors of widths {widths}; this attention network "
                            f"was built for {self.stage_widths}")

    def transfer_loss(self, student_vectors, teacher_vectors):
        """Sum over pairs of KL(softmax_b tanh(G_S) || softmax_b tanh(G_T)), the attention on
        its moving statistics, the teacher's side constant."""
        self._check_vectors(student_vectors)
        self._check_vectors(teacher_vectors)
        losses = []
        for pair, attention in enumerate(self.attentions, start=1):
            student = tf.tanh(attention(student_vectors[pair], student_vectors[pair - 1], training=False))
            teacher = tf.tanh(attention(teacher_vectors[pair], teacher_vectors[pair - 1], training=False))
            losses.append(kl_over_batch(student, tf.stop_gradient(teacher)))
        return tf.add_n(losses)

    def estimation_loss(self, teacher_vectors, head_masks=None, training=True):
        """Sum over pairs of mean_b (1 - V_hat . V_j) on the teacher's vectors (the
        initialisation stage's loss, weight decay apart). head_masks: one [h, B, 1] per pair,
        or None to draw them."""
        self._check_vectors(teacher_vectors)
        teacher_vectors = [tf.stop_gradient(v) for v in teacher_vectors]
        head_masks = head_masks or [None] * len(self.estimators)
        losses = []
        for pair, (attention, estimator, mask) in enumerate(
                zip(self.attentions, self.estimators, head_masks), start=1):
            previous = teacher_vectors[pair - 1]
            graph = attention(teacher_vectors[pair], previous, training=training)
            estimate = estimator(previous, graph, head_mask=mask, training=training)
            losses.append(tf.reduce_mean(1.0 - tf.reduce_sum(estimate * teacher_vectors[pair], axis=-1)))
        return tf.add_n(losses)

    def init_weight_decay(self, weight_decay=INIT_WEIGHT_DECAY):
        """weight_decay * sum(v^2), not halved, over every trainable variable."""
        return weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.trainable_weights])


def mhgd_transfer_loss(student_maps, teacher_maps, graph, gradient="original", backend="linalg_svd"):
    """The main stage's MHGD loss between paired lists of [B, H, W, D] maps (`stage_vectors`,
    then `graph.transfer_loss`). Scalar, no weight factor, as the authors'."""
    return graph.transfer_loss(*stage_vectors(student_maps, teacher_maps, gradient, backend))


def mhgd_init_loss(teacher_maps, graph, backend="linalg_svd", head_masks=None, training=True):
    """The initialisation stage's loss: `graph.estimation_loss` on the teacher's vectors plus
    `graph.init_weight_decay()`; training: the mode of the networks' batch norms."""
    if len(teacher_maps) < 2:
        raise UserError("MHGD relates consecutive taps: give at least 2 feature maps")
    return (graph.estimation_loss(teacher_vectors(teacher_maps, backend), head_masks, training)
            + graph.init_weight_decay())


@dataclasses.dataclass(frozen=True)
class MHGDOptions(MethodOptions):
    weight: float = option(1.0, "weight of the MHGD term (the authors' 1)", at_least=0)
    init_epochs: int = option(
        AUTHORS_INIT_EPOCHS, "epochs in which the attention and estimator networks alone "
        "train on the teacher's stage vectors, before the student (the authors' 40)",
        at_least=1)
    gradient: str = option(
        "original", "backward pass of the student's decompositions: original (KD-EID's, "
        "the authors') or exact (the true gradient)", choices=GRADIENTS)
    backend: str = option(
        "linalg_svd", "decomposition backend (as KD-SVD's --svd_backend): linalg_svd "
        "(faithful: the loss depends on the teacher's signs), gram, hybrid or batched",
        choices=BACKENDS)


@METHODS.register("mhgd")
class MultiHeadGraphDistillation(DistillationMethod):
    """Multi-head graph distillation (Lee, Song, BMVC 2019) between consecutive taps of equal
    widths, in the authors' two stages: `init_epochs` (40) epochs in which the attention and
    estimator networks alone learn to estimate each stage's teacher vectors from the
    previous stage's (the student not run), then the student alone on CE + weight decay +
    `weight` x the KL between the attentions of its and the teacher's vectors, by the clip
    rule, the attention frozen on its first-stage statistics."""

    Options = MHGDOptions
    library_name = "MHGDDistillation"
    min_taps = 2
    default_gradient_rule = "clip"

    def stages(self):
        # `Optimizer_w_MHGD`: first the 'MHA' variables alone, with their update ops; then the
        # student's variables alone by the clip rule, whose sigmoid counts the epochs of its own
        # stage (the train step passes `epoch - first epoch of the stage`), the attention's
        # update ops left out (an update restores the statistics of what it does not train).
        estimate = Update(trains=("method",), task=False, distillation="init_loss",
                          reads_student=False)
        return (Stage("attention", epochs=self.options.init_epochs, updates=(estimate,)),
                Stage(updates=(Update(trains=("student",), rule=self.gradient_rule),)))

    def build(self, student_out_shape, teacher_out_shape):
        student, teacher = student_out_shape["features"], teacher_out_shape["features"]
        if len(student) != len(teacher) or any(
                s[-1] != t[-1] for s, t in zip(student, teacher)):
            raise UserError(f"MHGD: the student's taps {[tuple(s[1:]) for s in student]} and "
                            f"the teacher's {[tuple(t[1:]) for t in teacher]} must pair one to "
                            "one with the same widths")
        self.graph = MultiHeadGraph([shape[-1] for shape in teacher], dtype=self.dtype_policy,
                                    name="graph")

    def _maps(self, outputs):
        """The maps in the method's variable dtype (float32 under a mixed policy: the
        decompositions stay in full precision)."""
        return [tf.cast(feature_map, self.variable_dtype) for feature_map in outputs["features"]]

    def init_loss(self, student_out, teacher_out, labels, training=False):
        """The first stage's term: the estimation loss plus the networks' unhalved weight
        decay (`mhgd_init_loss`), their batch norms in training mode in training."""
        return {"estimation": mhgd_init_loss(self._maps(teacher_out), self.graph,
                                             self.options.backend, training=training)}

    def call(self, student_out, teacher_out, labels, training=False):
        return {"mhgd": self.options.weight * mhgd_transfer_loss(
            self._maps(student_out), self._maps(teacher_out), self.graph,
            self.options.gradient, self.options.backend)}

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 1e-2, 1e2, sampling="log", default=1.0),
                "clip_scale": hp.Float("clip_scale", 0.1, 10.0, sampling="log", default=1.0)}
