"""CRD: contrastive representation distillation.

Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (arXiv 1910.10699),
section 3: each network's penultimate feature is embedded and L2-normalised; an NCE critic
tells the student's embedding of a sample and the teacher's of the same sample (the positive)
from those of K samples of other classes (the negatives), which come from a memory bank of
past embeddings, symmetrically with the teacher's embedding as the anchor.

Followed: HobbitLong/RepDistiller `crd/criterion.py` (`CRDLoss`, `Embed`, `ContrastLoss`),
`crd/memory.py` (`ContrastMemory`), `dataset/cifar100.py` (`CIFAR100InstanceSample`),
`helper/loops.py` and `train_student.py`. What their code does, kept here:

- the scores of the student's embedding are taken against the teacher's memory and those of
  the teacher's embedding against the student's memory (`out_v1`, `out_v2`); the loss is the
  sum of the two sides' `ContrastLoss`;
- each score is exp(<memory row, v> / 0.07) / Z, with one Z per side, -1 until the first
  training batch sets it to n_data times the mean of that batch's unnormalised scores
  (positives included), that batch included, then never changed. Z is a non-trainable
  variable, so a resumed run restores it with the checkpoint; it carries no gradient;
- `ContrastLoss` writes the noise term as m Pn = K / n_data, with eps 1e-7 in both
  denominators: -(1/B)[sum log(x_0 / (x_0 + K/N + eps)) + sum_j log((K/N) / (x_j + K/N + eps))];
- after scoring, the memory rows of the batch's samples become normalise(0.5 old + 0.5 v),
  without gradient; the next batch scores against them;
- the memories start uniform in +-1 / sqrt(d / 3): rows of unit norm only in expectation;
- the teacher's embedding head trains (on the teacher side's loss), the teacher does not;
- negatives ('exact' mode): for each sample K indices of the training set drawn uniformly from
  the other classes, without replacement unless K exceeds that pool (`np.random.choice(...,
  replace=K > len(pool))`: for CIFAR-100, 16384 of 49500, without), after the sample's own
  index in column 0.

Differences: each score is the same dot product, but computed as one [B, n_data] product then
gathered, not by gathering [B, K+1, d] memory rows (537 MB a side at B = 64, K = 16384);
normalising divides by max(norm, 1e-6) where theirs divides by the norm (a zero vector gives
zeros, not NaN); the negatives come from a stateless seed instead of numpy's global generator;
only the 'exact' mode with every negative (`mode='exact'`, `percent=1`, their defaults) is
ported, not 'relax' nor `ContrastMemory`'s uniform `AliasMethod` draw without contrast indices.

Training (`scripts/run_cifar_distill.sh`, `train_student.py`): total = 1 CE + 0 KD + 0.8 CRD
(`-r 1 -a 0 -b 0.8`; CRD+KD is `-a 1`), K 16384, T 0.07, momentum 0.5, embedding 128; the
features are `feat[-1]` of both networks' `forward(is_feat=True)`, the pooled vector before
the classifier (the `pool` layer of sskd_tf's crd: networks), the teacher's in eval mode;
the embedding heads get the run's weight decay (they are in the optimizer's parameters).

The method `crd` (class `CRD`): CE 1 + 0.8 CRD by default, the README's CRD row (`-a 0`);
`kd_weight=1` adds RepDistiller's DistillKL (T 4, times T^2) for CRD+KD. The 0.9 KD / 0.1 CE
pair of `train_student.py`'s scripts is its KD row (`-r 0.1 -a 0.9 -b 0`), not CRD's. It
embeds the last tap, averaged over space when it is a map (the crd: ResNets' `pool`). The
older stored RepDistiller revision tests `opt.distill in ['contrast']` where the flag says
`crd` (so it never builds the sampling loader for CRD); the later revisions, followed here,
test `crd`. The method runs on one replica only (`refuse_replicas`).

What the data pipeline gives every training batch: `sample_indices` [B], each example's
position in the training set (the order of the labels given to `ContrastSampler`, before
shuffling), and `contrast_indices` [B, K + 1] = `ContrastSampler(...)(sample_indices, seed)`
with a per-step seed; every index at most once a batch (the memory update of a repeated index
keeps one of its writes); n_data is the size of that training set. The method draws the
contrast indices itself, in the step, from the batch's `sample_indices` and the seed (first
seed, step count) it keeps as a non-trainable weight, after reading the training labels by
index in `prepare`.
"""
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.soft_logits import soft_logits_loss
from sskd_tf.errors import UserError
from sskd_tf.models.common import l2_decay
from sskd_tf.models.crd.layers import default_uniform

EMBEDDING_DIM = 128
NUM_NEGATIVES = 16384
NCE_TEMPERATURE = 0.07
NCE_MOMENTUM = 0.5
EPSILON = 1e-7
CRD_WEIGHT = 0.8
KD_TEMPERATURE = 4.0
EMBEDDING_WEIGHT_DECAY = 5e-4


class CRDEmbedding(keras.layers.Layer):
    """RepDistiller's `Embed`: a linear map of [B, D] features to `units`, with bias and
    PyTorch's default `nn.Linear` init, then L2-normalised rows. `regularizer` applies to the
    kernel and the bias (RepDistiller's weight decay covers both)."""

    def __init__(self, units=EMBEDDING_DIM, regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.regularizer = regularizer

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise UserError(f"CRD embeds pooled [batch, width] features, got shape "
                            f"{tuple(input_shape)}")
        fan_in = input_shape[-1]
        self.kernel = self.add_weight(shape=(fan_in, self.units),
                                      initializer=default_uniform(fan_in),
                                      regularizer=self.regularizer, name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer=default_uniform(fan_in),
                                    regularizer=self.regularizer, name="bias")

    def call(self, features):
        return tf.math.l2_normalize(tf.matmul(features, self.kernel) + self.bias, axis=-1)


class ContrastMemory(keras.layers.Layer):
    """RepDistiller's `ContrastMemory`: the two memory banks [num_data, dim] and their
    normalisation constants Z, as non-trainable variables (checkpointed with the layer).

    `call(student_embedding, teacher_embedding, sample_indices, contrast_indices, training)`
    returns (student_scores, teacher_scores), each [B, K + 1]: the student's embedding against
    the teacher's memory rows `contrast_indices`, and the teacher's against the student's. With
    `training`, a Z still unset is set from this batch and the rows `sample_indices` of each
    memory move towards the batch's embeddings, after scoring; otherwise nothing is written
    (an unset Z is then this batch's, for this call only). Computes in its variables' dtype."""

    def __init__(self, num_data, dim=EMBEDDING_DIM, temperature=NCE_TEMPERATURE,
                 momentum=NCE_MOMENTUM, seed=None, **kwargs):
        super().__init__(autocast=False, **kwargs)
        if int(num_data) < 1:
            raise UserError(f"the CRD memory needs at least one training example, got {num_data}")
        self.num_data, self.dim = int(num_data), int(dim)
        self.temperature, self.momentum = float(temperature), float(momentum)
        bound = 1.0 / math.sqrt(self.dim / 3.0)
        self.student_memory, self.teacher_memory = (
            self.add_weight(shape=(self.num_data, self.dim), trainable=False, name=f"{side}_memory",
                            initializer=keras.initializers.RandomUniform(
                                -bound, bound, seed=None if seed is None else seed + offset))
            for offset, side in enumerate(("student", "teacher")))
        self.student_normalizer, self.teacher_normalizer = (
            self.add_weight(shape=(), initializer=keras.initializers.Constant(-1.0),
                            trainable=False, name=f"{side}_normalizer")
            for side in ("student", "teacher"))
        self.built = True

    def _unnormalized_scores(self, embedding, memory, contrast_indices):
        products = tf.matmul(embedding, memory.value, transpose_b=True)
        return tf.exp(tf.gather(products, contrast_indices, batch_dims=1) / self.temperature)

    def _normalized(self, scores, normalizer, training):
        first_batch_z = tf.stop_gradient(tf.reduce_mean(scores)) * self.num_data
        z = tf.where(normalizer < 0, first_batch_z, normalizer.value)
        if training:
            normalizer.assign(z)
        return scores / z

    def _update(self, memory, embedding, sample_indices):
        rows = tf.gather(memory.value, sample_indices)
        moved = self.momentum * rows + (1.0 - self.momentum) * tf.stop_gradient(embedding)
        memory.value.scatter_update(tf.IndexedSlices(tf.math.l2_normalize(moved, axis=-1),
                                                     sample_indices))

    def call(self, student_embedding, teacher_embedding, sample_indices, contrast_indices,
             training=False):
        _check_indices(student_embedding, sample_indices, contrast_indices)
        dtype = self.student_memory.dtype
        student_embedding = tf.cast(student_embedding, dtype)
        teacher_embedding = tf.cast(teacher_embedding, dtype)
        student_scores = self._unnormalized_scores(student_embedding, self.teacher_memory,
                                                   contrast_indices)
        teacher_scores = self._unnormalized_scores(teacher_embedding, self.student_memory,
                                                   contrast_indices)
        student_scores = self._normalized(student_scores, self.student_normalizer, training)
        teacher_scores = self._normalized(teacher_scores, self.teacher_normalizer, training)
        if training:
            self._update(self.student_memory, student_embedding, sample_indices)
            self._update(self.teacher_memory, teacher_embedding, sample_indices)
        return student_scores, teacher_scores


def _check_indices(embedding, sample_indices, contrast_indices):
    if sample_indices.shape.rank != 1 or contrast_indices.shape.rank != 2:
        raise UserError(f"CRD needs sample indices [batch] and contrast indices [batch, K + 1], "
                        f"got shapes {tuple(sample_indices.shape)} and "
                        f"{tuple(contrast_indices.shape)}")
    batches = {embedding.shape[0], sample_indices.shape[0], contrast_indices.shape[0]} - {None}
    if len(batches) > 1:
        raise UserError(f"CRD's embeddings and indices disagree on the batch size: "
                        f"{sorted(batches)}")


def contrast_loss(scores, num_data):
    """RepDistiller's `ContrastLoss` ("Eq (18)" of the paper) of one side's scores [B, K + 1],
    the positive in column 0: -(1/B) [sum_b log(x_b0 / (x_b0 + K/N + eps))
    + sum_bj log((K/N) / (x_bj + K/N + eps))], N = num_data, eps = 1e-7."""
    noise = tf.cast(tf.shape(scores)[1] - 1, scores.dtype) / float(num_data)
    positives, negatives = scores[:, 0], scores[:, 1:]
    log_positive = tf.math.log(positives / (positives + noise + EPSILON))
    log_negative = tf.math.log(noise / (negatives + noise + EPSILON))
    batch = tf.cast(tf.shape(scores)[0], scores.dtype)
    return -(tf.reduce_sum(log_positive) + tf.reduce_sum(log_negative)) / batch


class CRDCriterion(keras.layers.Layer):
    """RepDistiller's `CRDLoss`: the two embedding heads, the memory and the two sides' NCE
    losses. `call(student_features, teacher_features, sample_indices, contrast_indices,
    training)` -> the scalar CRD loss (before its weight 0.8); the teacher's features get no
    gradient."""

    def __init__(self, num_data, dim=EMBEDDING_DIM, temperature=NCE_TEMPERATURE,
                 momentum=NCE_MOMENTUM, regularizer=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_data = int(num_data)
        policy = self.dtype_policy
        self.student_embedding = CRDEmbedding(dim, regularizer, dtype=policy, name="embed_s")
        self.teacher_embedding = CRDEmbedding(dim, regularizer, dtype=policy, name="embed_t")
        self.memory = ContrastMemory(num_data, dim, temperature, momentum, seed, dtype=policy,
                                     name="contrast")

    def call(self, student_features, teacher_features, sample_indices, contrast_indices,
             training=False):
        student = self.student_embedding(student_features)
        teacher = self.teacher_embedding(tf.stop_gradient(teacher_features))
        student_scores, teacher_scores = self.memory(student, teacher, sample_indices,
                                                     contrast_indices, training=training)
        return contrast_loss(student_scores, self.num_data) + contrast_loss(teacher_scores,
                                                                            self.num_data)


class ContrastSampler:
    """The contrast indices of RepDistiller's `CIFAR100InstanceSample` in its default 'exact'
    mode, as a pure function of the training set's labels (`train_labels[i]`: the class of
    example i), the batch's `sample_indices` [B] and a stateless `seed` (shape [2] integers):
    `sampler(sample_indices, seed)` -> int64 [B, K + 1], column 0 the sample's own index,
    columns 1.. K indices of examples of other classes, drawn uniformly, independently per
    row, without replacement when the sample's class has at least K others (else with)."""

    def __init__(self, train_labels, num_negatives=NUM_NEGATIVES):
        labels = np.asarray(train_labels)
        if (labels.ndim != 1 or not labels.size or not np.issubdtype(labels.dtype, np.integer)
                or labels.min() < 0):
            raise UserError("CRD's sampler needs the training set's labels as one list of "
                            "non-negative integer classes")
        if int(num_negatives) < 1:
            raise UserError(f"CRD needs at least one negative, got {num_negatives}")
        self.num_negatives = int(num_negatives)
        pools = [np.flatnonzero(labels != c) for c in range(labels.max() + 1)]
        sizes = np.array([len(pool) for pool in pools])
        if sizes.min() == 0:
            raise UserError("CRD needs negatives from other classes, but the training set has "
                            "only one class")
        table = np.full((len(pools), sizes.max()), -1, np.int64)
        for c, pool in enumerate(pools):
            table[c, :len(pool)] = pool
        self._labels = tf.constant(labels, tf.int64)
        self._pools = tf.constant(table)
        self._pool_sizes = tf.constant(sizes, tf.int64)
        self._draws_without_replacement = bool(sizes.max() >= self.num_negatives)

    def _positions_with_replacement(self, sizes, seed):
        uniform = tf.random.stateless_uniform([tf.shape(sizes)[0], self.num_negatives], seed,
                                              dtype=tf.float64)
        positions = tf.cast(uniform * tf.cast(sizes[:, None], tf.float64), tf.int64)
        return tf.minimum(positions, sizes[:, None] - 1)

    def _positions_without_replacement(self, pools, seed):
        keys = tf.random.stateless_uniform(tf.shape(pools), seed, minval=None, maxval=None,
                                           dtype=tf.int64)
        keys = tf.where(pools >= 0, keys, tf.int64.min)
        return tf.math.top_k(keys, self.num_negatives, sorted=False).indices

    def __call__(self, sample_indices, seed):
        sample_indices = tf.cast(sample_indices, tf.int64)
        classes = tf.gather(self._labels, sample_indices)
        pools = tf.gather(self._pools, classes)
        sizes = tf.gather(self._pool_sizes, classes)
        with_seed, without_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        positions = self._positions_with_replacement(sizes, with_seed)
        if self._draws_without_replacement:
            positions = tf.where((sizes >= self.num_negatives)[:, None],
                                 tf.cast(self._positions_without_replacement(pools, without_seed),
                                         tf.int64),
                                 positions)
        negatives = tf.gather(pools, positions, batch_dims=1)
        return tf.concat([sample_indices[:, None], negatives], axis=1)


def pooled(features):
    """The [B, D] vector CRD embeds from a tap: a 2-D tap as it is, a feature map averaged over
    its spatial axes (for the crd: ResNets, whose last tap is the last stage's post-ReLU map,
    this is their `pool` vector, RepDistiller's `feat[-1]`)."""
    rank = features.shape.rank
    if rank == 2:
        return features
    if rank == 4:
        return tf.reduce_mean(features, axis=[1, 2])
    raise UserError(f"CRD embeds a [batch, width] vector or a [batch, H, W, C] map, got a tap "
                    f"of shape {tuple(features.shape)}")


def training_labels(train_ds):
    """The label of every training example by its index, from batches that carry
    `sample_indices` ({"images", "sample_indices", ...}, labels): an int64 array of the
    training set's size (the largest index + 1). Every index must appear."""
    found = {}
    for inputs, labels in train_ds:
        if not isinstance(inputs, dict) or "sample_indices" not in inputs:
            raise UserError("CRD draws its negatives from the training set's indices: its data "
                            "must carry them, ({'images': ..., 'sample_indices': ...}, labels)")
        found.update(zip(inputs["sample_indices"].numpy().tolist(),
                         np.asarray(labels).reshape(-1).tolist()))
    if not found:
        raise UserError("CRD found no training batch to read the training set's labels from")
    count = max(found) + 1
    missing = count - len(found)
    if missing or min(found) < 0:
        raise UserError(f"CRD needs the label of every training example: {missing} of the "
                        f"indices 0-{count - 1} are not in the data it was prepared with")
    return np.array([found[index] for index in range(count)], np.int64)


def refuse_replicas():
    """CRD under one replica only. Its memory banks and Z are written in the step from the
    batch's embeddings (a scatter of the batch's rows, Z from the first batch's mean): under
    several replicas each would write its own copy from its share of the batch, so the banks
    would hold a different history on each and Z the first share's mean, and RepDistiller's
    update has no defined all-replica form to follow."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        raise UserError(f"crd runs on one replica only (its memory banks are written per step "
                        f"and cannot be kept in sync), not {replicas}: use --strategy=default")


@dataclasses.dataclass(frozen=True)
class CRDOptions(MethodOptions):
    weight: float = option(CRD_WEIGHT, "weight of the CRD term (RepDistiller's -b 0.8)",
                           at_least=0)
    kd_weight: float = option(0.0, "weight of RepDistiller's KD term (DistillKL: T^2 times the "
                                   "KL at kd_temperature) beside CRD: 0, CRD (-a 0); 1, CRD+KD",
                              at_least=0)
    kd_temperature: float = option(KD_TEMPERATURE, "temperature of the KD term (RepDistiller's "
                                                   "--kd_T 4)", at_least=1e-12)
    ce_weight: float = option(1.0, "weight of the task loss (RepDistiller's -r 1)", at_least=0)
    feature_dim: int = option(EMBEDDING_DIM, "width of the embeddings (--feat_dim 128)",
                              at_least=1)
    num_negatives: int = option(NUM_NEGATIVES, "negatives per sample, from the other classes "
                                               "(--nce_k 16384)", at_least=1)
    nce_temperature: float = option(NCE_TEMPERATURE, "temperature of the scores (--nce_t 0.07)",
                                    at_least=1e-12)
    nce_momentum: float = option(NCE_MOMENTUM, "momentum of the memory update (--nce_m 0.5)",
                                 at_least=0)
    embedding_weight_decay: float = option(
        EMBEDDING_WEIGHT_DECAY, "weight decay of the two embedding heads, PyTorch's (gradient "
        "wd * w; RepDistiller's optimizer decays them with the student, 5e-4)", at_least=0)


@METHODS.register("crd")
class CRD(DistillationMethod):
    """Contrastive representation distillation (Tian et al., ICLR 2020): the student's and the
    teacher's pooled last features, embedded by heads of the method's own, are told apart from
    K negatives of other classes held in two memory banks (RepDistiller's `CRDLoss`), weighted
    by `weight` beside the task loss at `ce_weight` (and KD at `kd_weight`). Reads the last tap
    and the batch's `sample_indices`; `prepare(teacher, data)` must see the training set's
    labels by index before the method is built (the run does it)."""

    Options = CRDOptions
    library_name = "CRDDistillation"
    reads = "features"
    min_taps = 1
    recipe = "crd2020"
    step_inputs = ("sample_indices",)

    def __init__(self, name=None, **options):
        super().__init__(name=name, **options)
        refuse_replicas()
        self.train_labels = None
        # Drawn from the global generators, so fixed by the run's seed (keras.utils.
        # set_random_seed); checkpointed with the draw count, so a resumed run keeps it.
        self._first_seed = int(np.random.randint(0, 2**31 - 1))

    @property
    def task_weight(self):
        return self.options.ce_weight

    def prepare(self, teacher, train_ds):
        """Read the training set's labels by index from `train_ds` (finite: it is read to
        its end), once: a method prepared already keeps its labels (the Distiller's `fit`
        prepares again, on the run's endless stream)."""
        if self.train_labels is not None:
            return
        self.train_labels = training_labels(train_ds)
        self.sampler = ContrastSampler(self.train_labels, self.options.num_negatives)

    @property
    def num_data(self):
        return None if self.train_labels is None else len(self.train_labels)

    def build(self, student_out_shape, teacher_out_shape):
        refuse_replicas()
        if self.train_labels is None:
            raise UserError("CRD must see its training data before it is built: call "
                            "method.prepare(teacher, data) with batches carrying "
                            "sample_indices first")
        shapes = []
        for side, out_shape in (("student", student_out_shape), ("teacher", teacher_out_shape)):
            tap = tuple(out_shape["features"][-1])
            if len(tap) not in (2, 4):
                raise UserError(f"CRD embeds the {side}'s last tap, of shape {tap}: it needs "
                                "[batch, width] or [batch, H, W, C]")
            shapes.append((tap[0], tap[-1]))
        options = self.options
        self.criterion = CRDCriterion(
            self.num_data, options.feature_dim, options.nce_temperature, options.nce_momentum,
            l2_decay(options.embedding_weight_decay), seed=self._first_seed, name="criterion")
        self.criterion.student_embedding.build(shapes[0])
        self.criterion.teacher_embedding.build(shapes[1])
        self.criterion.built = True
        # The stateless seed of step n's negatives is (first seed, n): a resumed run restores
        # both and draws what the uninterrupted one drew.
        self.draw_seed = self.add_weight(
            shape=(2,), dtype="int64", trainable=False, name="draw_seed",
            initializer=keras.initializers.Constant([self._first_seed, 0]))

    def call(self, student_out, teacher_out, labels, training=False, sample_indices=None):
        if sample_indices is None:
            raise UserError("CRD needs each example's index in the training set "
                            "(the step input sample_indices)")
        sample_indices = tf.cast(tf.reshape(sample_indices, [-1]), tf.int64)
        seed = self.draw_seed.value
        contrast_indices = self.sampler(sample_indices, seed)
        if training:
            self.draw_seed.assign(seed + tf.constant([0, 1], tf.int64))
        student_features = pooled(student_out["features"][-1])
        teacher_features = pooled(teacher_out["features"][-1])
        loss = self.criterion(student_features, teacher_features, sample_indices,
                              contrast_indices, training=training)
        terms = {"crd": self.options.weight * loss}
        if self.options.kd_weight:
            terms["kd"] = self.options.kd_weight * soft_logits_loss(
                student_out["logits"], teacher_out["logits"], self.options.kd_temperature,
                scale_by_t_squared=True)
        return terms

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 0.1, 5.0, sampling="log", default=CRD_WEIGHT)}
