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
import keras
import numpy as np
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.fitnet import apply_regressors, build_regressors
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


@METHODS.register("rdim")
class RdimKD(DistillationMethod):
    def __init__(
        self, projection="random", dim=None, weight=1.0, seed=None, pca_max_batches=None, **kwargs
    ):
        super().__init__(**kwargs)
        if projection not in PROJECTIONS:
            raise UserError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.projection = projection
        self.dim = None if dim is None else int(dim)
        self.weight = float(weight)
        self.seed = seed
        self.pca_max_batches = pca_max_batches
        self._pca_directions = None

    def subspace_size(self, teacher_width):
        dim = self.dim if self.dim is not None else teacher_width // DEFAULT_DIM_DIVISOR
        return max(1, min(dim, teacher_width))

    def build(self, student_out_shape, teacher_out_shape):
        teacher_shapes = teacher_out_shape["features"]
        self.regressors = build_regressors(student_out_shape["features"], teacher_shapes)
        self.projections = []
        for tap, shape in enumerate(teacher_shapes):
            width = shape[-1]
            seed = None if self.seed is None else self.seed + tap
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
        if self.projection != "pca":
            return
        statistics = None
        for step, batch in enumerate(train_ds):
            if self.pca_max_batches is not None and step >= self.pca_max_batches:
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
        return {"rdim": self.weight * loss}

    @classmethod
    def search_space(cls, hp):
        return {
            "weight": hp.Float("weight", 1e-2, 1e2, sampling="log", default=1.0),
            "projection": hp.Choice("projection", list(PROJECTIONS), default="random"),
        }
