"""RdimKD: distillation in a low-dimensional projection of the teacher's features.

Guo, He, Li, Qin, Pham, Zhang, Liu, "RdimKD: Generic Distillation Paradigm by
Dimensionality Reduction", arXiv 2312.08700 (2023): with a projection
matrix K [D_T, d], d < D_T, per tap, L = ||K^T f_T - K^T r(f_S)||^2 at every
position, r a learned 1x1 conv when the student's width differs from the teacher's.
The student only has to reproduce the teacher inside the subspace.

Written from the paper's description; no reference code was consulted. Choices
of this port:

- `projection="random"` (default): K is a fixed random matrix with orthonormal
  columns; `"pca"`: the teacher's top d
  principal directions per tap, estimated in `prepare` from one pass over the
  training data (covariance of the teacher's activations over all positions).
  Either way K is a non-trainable weight, so it is checkpointed.
- `dim=None` gives d = D_T // 4 per tap; an int sets d for every tap.
- the distance is the element mean of the squared difference per tap, summed
  over taps, times `weight` (1 by default, not taken from the paper).
"""
import dataclasses
import typing

import keras
import numpy as np
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.fitnet import apply_regressors, build_regressors
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError

PROJECTIONS = ("random", "pca")
DEFAULT_DIM_DIVISOR = 4


def projected_l2_loss(student_features, teacher_features, projections):
    """Sum over taps of mean((S K - T K)^2) with S already at the teacher's width.
    The teacher gets no gradient."""
    per_tap = []
    for student, teacher, projection in zip(student_features, teacher_features, projections):
        difference = tf.tensordot(student - tf.stop_gradient(teacher), projection, axes=1)
        per_tap.append(tf.reduce_mean(tf.square(difference)))
    return tf.add_n(per_tap)


def principal_directions(covariance, dim):
    """[D, dim] orthonormal eigenvectors of a covariance matrix, largest eigenvalue first."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:dim]
    return eigenvectors[:, order]


class ActivationCovariance:
    """Running mean and covariance of the channel vectors of [B, H, W, D] maps."""

    def __init__(self, width):
        self.width = width
        self.count = 0
        self.total = np.zeros(width)
        self.outer_total = np.zeros((width, width))

    def update(self, feature_map):
        vectors = np.asarray(feature_map, dtype=np.float64).reshape(-1, feature_map.shape[-1])
        self.count += vectors.shape[0]
        self.total += vectors.sum(axis=0)
        self.outer_total += vectors.T @ vectors

    def covariance(self):
        mean = self.total / self.count
        return self.outer_total / self.count - np.outer(mean, mean)


@dataclasses.dataclass(frozen=True)
class RdimOptions(MethodOptions):
    projection: str = option("random", "the subspace: a fixed random one, or the teacher's "
                             "principal directions estimated in prepare (pca)",
                             choices=PROJECTIONS)
    dim: typing.Optional[int] = option(None, "subspace size per tap; None: a quarter of the "
                                       "teacher's width", at_least=1)
    weight: float = option(1.0, "weight of the projected term", at_least=0)
    seed: typing.Optional[int] = option(None, "seed of the random projections (tap t uses "
                                        "seed + t); None: unseeded")
    pca_max_batches: typing.Optional[int] = option(None, "batches that estimate the "
                                                   "principal directions; None: one pass",
                                                   at_least=1)


@METHODS.register("rdim")
class RdimKD(DistillationMethod):
    """Feature matching in a reduced-dimension subspace of the teacher's taps.
    `projection="pca"` estimates the subspace from the training data before training."""

    Options = RdimOptions
    library_name = "RdimDistillation"

    def __init__(self, name=None, **options):
        super().__init__(name=name, **options)
        self._pca_directions = None

    def subspace_size(self, teacher_width):
        dim = self.options.dim
        if dim is None:
            dim = teacher_width // DEFAULT_DIM_DIVISOR
        return max(1, min(dim, teacher_width))

    def build(self, student_out_shape, teacher_out_shape):
        teacher_shapes = teacher_out_shape["features"]
        self.regressors = build_regressors(student_out_shape["features"], teacher_shapes)
        self.projections = []
        for tap, shape in enumerate(teacher_shapes):
            width = shape[-1]
            seed = None if self.options.seed is None else self.options.seed + tap
            self.projections.append(
                self.add_weight(
                    shape=(width, self.subspace_size(width)),
                    initializer=keras.initializers.Orthogonal(seed=seed),
                    trainable=False,
                    name=f"projection_{tap}",
                )
            )
        if self._pca_directions is not None:
            self._assign_pca()

    def prepare(self, teacher, train_ds):
        """For `projection="pca"`: one pass of the teacher over `train_ds` (batches
        of images, or (images, labels) pairs) to estimate each tap's top
        principal directions."""
        if self.options.projection != "pca":
            return
        statistics = None
        for step, batch in enumerate(train_ds):
            if (self.options.pca_max_batches is not None
                    and step >= self.options.pca_max_batches):
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            features = teacher(images, training=False)["features"]
            if statistics is None:
                statistics = [ActivationCovariance(f.shape[-1]) for f in features]
            for tap_statistics, feature_map in zip(statistics, features):
                tap_statistics.update(feature_map)
        if statistics is None:
            raise UserError("the training dataset is empty: cannot estimate the PCA projection")
        self._pca_directions = [
            principal_directions(s.covariance(), self.subspace_size(s.width))
            for s in statistics
        ]
        if self.built:
            self._assign_pca()

    def _assign_pca(self):
        for projection, directions in zip(self.projections, self._pca_directions):
            projection.assign(directions.astype(projection.dtype))

    def call(self, student_out, teacher_out, labels, training=False):
        student_features = apply_regressors(self.regressors, student_out["features"])
        loss = projected_l2_loss(student_features, teacher_out["features"], self.projections)
        return {"rdim": self.options.weight * loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "weight": hp.Float("weight", 1e-2, 1e2, sampling="log", default=1.0),
            "projection": hp.Choice("projection", list(PROJECTIONS), default="random"),
        }
