"""KD-SVD: self-supervised knowledge distillation through singular vectors.

Lee, Kim, Song, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition", ECCV 2018 (arXiv 1807.06819), section 3.

Each feature map is compressed to its leading right singular vectors; the
knowledge is the radial-basis-function correlation between the vectors of
consecutive taps (paper eq. 5-7). Three variants (docs/method.md sections 1, 2 and 4):

- "refined": the authors' refined code (KD_methods_with_TF `nets/Shared.py` and
  `nets/SVP.py`), the default; method "svd".
- "eid": the same with the Gram-matrix decomposition (KD-EID); method "eid".
- "eccv": the 2018 release (SSKD_SVD `nets/Distillation.py`); method "svd_eccv".

Every variant takes a decomposition backend (`BACKENDS`), all with the same
backward formulas:
- "linalg_svd": `tf.linalg.svd` (KD-EID: its own Gram route) for both networks. Faithful.
- "gram": `linalg.gram_svd` for both: the fastest, with a fixed sign rule of its
  own, so the loss differs from "linalg_svd" where `tf.linalg.svd` gives the teacher's
  vectors other relative signs (see `linalg.gram_svd`).
- "hybrid": the faithful route only on the side whose signs the loss depends on,
  `linalg.gram_svd` on the other: the loss and gradients of "linalg_svd" (up to rounding)
  at part of its cost. The refined loss aligns the student's vectors to the
  teacher's, so only the teacher's signs matter; the 2018 release aligns the
  teacher's to the student's, so there only the student's do.
"""
import dataclasses
import functools
import math

import keras
import tensorflow as tf

from sskd_tf import linalg
from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.errors import UserError
from sskd_tf.linalg import BACKENDS, DECOMPOSITION_DEVICES

VARIANTS = ("refined", "eid", "eccv")
# The backward passes a user chooses (linalg.GRADIENTS also holds the 2018 release's own,
# which "original" selects for svd_eccv).
GRADIENTS = ("original", "exact")
RBF_WIDTH = 8.0


def _check_feature_maps(student_feats, teacher_feats):
    if len(student_feats) != len(teacher_feats):
        raise UserError(
            f"the student has {len(student_feats)} distillation taps and the teacher "
            f"{len(teacher_feats)}; they must be paired one to one"
        )
    if len(student_feats) < 2:
        raise UserError("KD-SVD relates consecutive taps: give at least 2 feature maps")
    for tap, (student, teacher) in enumerate(zip(student_feats, teacher_feats)):
        s_shape, t_shape = tuple(student.shape[1:]), tuple(teacher.shape[1:])
        if len(s_shape) != 3 or s_shape != t_shape:
            raise UserError(
                f"tap {tap}: student feature map {s_shape} and teacher feature map {t_shape} "
                "must be [H, W, D] maps of the same shape"
            )


def _as_matrices(feature_map):
    _, h, w, d = feature_map.shape
    return tf.reshape(feature_map, [-1, h * w, d])


def rbf_correlation(vectors, previous_vectors, width=RBF_WIDTH):
    """R[b, i, j, c] = exp(-(v[b, i, c] - v'[b, j, c])^2 / width) (paper eq. 6)."""
    diff = vectors[:, :, None, :] - previous_vectors[:, None, :, :]
    return tf.exp(-tf.square(diff) / width)


# ---------------------------------------------------------------- refined and eid variants


def leading_components(s, v, n):
    """First n singular values and right vectors, non-finite entries zeroed,
    L2-normalised (s over components, each v column over its length): docs/method.md section 1,
    steps 2-3. `tf.math.l2_normalize` is the normalisation of the refined code."""
    s = tf.math.l2_normalize(linalg.finite_or_zero(s)[:, :n], axis=1)
    v = tf.math.l2_normalize(linalg.finite_or_zero(v)[:, :, :n], axis=1)
    return s, v


def align_to_teacher(student_v, teacher_v):
    """For every teacher vector, the student vector most parallel to it, its sign
    flipped to agree (docs/method.md section 1 step 4): V_S A with
    A[b, j, t] = sign(C[b, j, t]) where |C[b, j, t]| = max_j |C[b, :, t]|, C = V_S^T V_T.
    Ties select every tied vector (as the original mask does)."""
    cosine = tf.matmul(student_v, teacher_v, transpose_a=True)
    magnitude = tf.abs(cosine)
    is_best = tf.equal(magnitude, tf.reduce_max(magnitude, axis=1, keepdims=True))
    mask = tf.where(is_best, tf.sign(cosine), tf.zeros_like(cosine))
    return tf.matmul(student_v, mask)


def refined_loss_from_components(student_vs, teacher_ss, teacher_vs, rbf_width=RBF_WIDTH):
    """Loss of docs/method.md section 1, steps 4-7, from normalised components per tap:
    student_vs [B, D, n_S], teacher_ss [B, K], teacher_vs [B, D, K]."""
    losses = []
    previous = None
    for student_v, teacher_s, teacher_v in zip(student_vs, teacher_ss, teacher_vs):
        student_v = align_to_teacher(student_v, teacher_v)
        weight = teacher_s[:, None, :]
        student_v, teacher_v = student_v * weight, teacher_v * weight
        if previous is not None:
            student_r = rbf_correlation(student_v, previous[0], rbf_width)
            teacher_r = rbf_correlation(teacher_v, previous[1], rbf_width)
            squared = tf.square(student_r - tf.stop_gradient(teacher_r))
            losses.append(tf.reduce_sum(linalg.finite_or_zero(squared)))
        previous = (student_v, teacher_v)
    return tf.add_n(losses)


def _refined_loss(student_feats, teacher_feats, decompose_student, decompose_teacher,
                  teacher_components, student_extra_components, rbf_width):
    student_vs, teacher_ss, teacher_vs = [], [], []
    for student, teacher in zip(student_feats, teacher_feats):
        _, m, n = _as_matrices(student).shape
        n_teacher = min(teacher_components, m, n)
        n_student = min(teacher_components + student_extra_components, m, n)
        t_s, _, t_v = decompose_teacher(_as_matrices(teacher))
        s_s, _, s_v = decompose_student(_as_matrices(student))
        t_s, t_v = leading_components(t_s, t_v, n_teacher)
        _, s_v = leading_components(s_s, s_v, n_student)
        student_vs.append(s_v)
        teacher_ss.append(t_s)
        teacher_vs.append(t_v)
    return refined_loss_from_components(student_vs, teacher_ss, teacher_vs, rbf_width)


# ---------------------------------------------------------------- eccv (2018 release)


def _scale_with_finite_gradient(x, weight):
    """x * weight with the same value, but a zero (not NaN) gradient where weight
    is not finite."""
    finite = tf.math.is_finite(weight)
    safe_weight = tf.where(finite, weight, tf.zeros_like(weight))
    return tf.where(finite, x * safe_weight, weight + tf.zeros_like(x))


def eccv_align(student_v, teacher_v, teacher_s, n, finite_gradient=False):
    """Alignment of the 2018 release (docs/method.md section 4) for one map: per teacher
    component, the student column of largest |cosine|; both weighted by the
    teacher's normalised singular values, then the *teacher* vector flipped to agree.

    The weights have no epsilon: a zero teacher map gives NaN, which the pair
    guard removes from the value. In the original, the NaN also reaches the
    backward pass and the 2018 gradient zeroes the whole sample;
    `finite_gradient=True` (used with the exact gradient) keeps the value but
    gives that product a zero gradient instead.
    """
    teacher_v, teacher_s = teacher_v[:, :, :n], teacher_s[:, :n]
    cosine = tf.matmul(student_v, teacher_v, transpose_a=True)
    best = tf.argmax(tf.abs(cosine), axis=1)
    student_v = tf.gather(student_v, best, axis=2, batch_dims=1)
    weight = tf.stop_gradient(teacher_s / tf.norm(teacher_s, axis=1, keepdims=True))[:, None, :]
    if finite_gradient:
        student_v = _scale_with_finite_gradient(student_v, weight)
    else:
        student_v = student_v * weight
    teacher_v = teacher_v * weight
    agree = tf.reduce_sum(student_v * teacher_v, axis=1, keepdims=True) >= 0
    return student_v, teacher_v * (2.0 * tf.cast(agree, teacher_v.dtype) - 1.0)


def eccv_nan_guard(tensors):
    """The 2018 release's guard over a pair's four aligned tensors (docs/method.md section 4):
    non-finite entries become 0 and each tensor's gradient is scaled by
    mask = finite_b * B / (sum_b finite_b + 1e-3), its value left unchanged."""
    top_finite = tf.math.is_finite(tensors[0]) & tf.math.is_finite(tensors[1])
    bottom_finite = tf.math.is_finite(tensors[2]) & tf.math.is_finite(tensors[3])
    sample_finite = tf.cast(
        tf.reduce_all(top_finite, axis=[1, 2], keepdims=True)
        & tf.reduce_all(bottom_finite, axis=[1, 2], keepdims=True),
        tensors[0].dtype,
    )
    batch = tf.cast(tf.shape(tensors[0])[0], tensors[0].dtype)
    mask = sample_finite * batch / (tf.reduce_sum(sample_finite) + 1e-3)
    guarded = []
    for tensor, finite in zip(tensors, (top_finite, top_finite, bottom_finite, bottom_finite)):
        tensor = tf.where(finite, tensor, tf.zeros_like(tensor))
        guarded.append(tf.stop_gradient((1.0 - mask) * tensor) + mask * tensor)
    return guarded


def eccv_loss_from_components(student_vs, teacher_ss, teacher_vs, num_vectors=1,
                              rbf_width=RBF_WIDTH, finite_gradient=False):
    """Loss of the 2018 release from the raw kept components of every tap
    (docs/method.md section 4): one RBF term per consecutive pair,
    l2_loss(R_S - R_T) * sqrt(n'), with n' = min(n, components of the lower tap)
    carried over from pair to pair as the original loop does.
    `finite_gradient`: see `eccv_align`."""
    losses = []
    n = num_vectors
    for top in range(len(student_vs) - 1):
        bottom = top + 1
        n = min(n, student_vs[bottom].shape[-1], teacher_vs[bottom].shape[-1])
        s_top, t_top = eccv_align(student_vs[top], teacher_vs[top], teacher_ss[top], n, finite_gradient)
        s_bottom, t_bottom = eccv_align(
            student_vs[bottom], teacher_vs[bottom], teacher_ss[bottom], n, finite_gradient)
        s_top, t_top, s_bottom, t_bottom = eccv_nan_guard([s_top, t_top, s_bottom, t_bottom])
        student_r = rbf_correlation(s_top, s_bottom, rbf_width)
        teacher_r = rbf_correlation(t_top, t_bottom, rbf_width)
        l2 = 0.5 * tf.reduce_sum(tf.square(student_r - tf.stop_gradient(teacher_r)))
        losses.append(l2 * math.sqrt(n))
    return tf.add_n(losses)


def _eccv_loss(student_feats, teacher_feats, decompose_student, decompose_teacher, num_vectors,
               rbf_width, finite_gradient):
    student_vs, teacher_ss, teacher_vs = [], [], []
    for student, teacher in zip(student_feats, teacher_feats):
        _, m, n = _as_matrices(student).shape
        kept = min(num_vectors + 1, m, n)
        _, _, s_v = decompose_student(_as_matrices(student))
        t_s, _, t_v = decompose_teacher(_as_matrices(teacher))
        student_vs.append(s_v[:, :, :kept])
        teacher_ss.append(t_s[:, :kept])
        teacher_vs.append(t_v[:, :, :kept])
    return eccv_loss_from_components(student_vs, teacher_ss, teacher_vs, num_vectors, rbf_width,
                                     finite_gradient=finite_gradient)


# ---------------------------------------------------------------- public API


def _decomposers(variant, gradient, backend, components, device):
    """(student, teacher) functions x -> (s, u, v): `linalg.decompose` by the variant's
    route, keeping `components` (student, teacher). The refined loss aligns the student's
    vectors to the teacher's, so only the teacher's signs matter; the 2018 release flips
    the teacher's to the student's, so only the student's do ("hybrid")."""
    route = "eid" if variant == "eid" else "svd"
    student_signs_matter = variant == "eccv"
    return tuple(
        functools.partial(linalg.decompose, route=route, gradient=gradient, backend=backend,
                          components=kept, signs_matter=signs_matter, device=device)
        for kept, signs_matter in zip(components, (student_signs_matter,
                                                   not student_signs_matter)))


def svd_kd_loss(student_feats, teacher_feats, variant="refined", gradient="original", *,
                backend="linalg_svd", teacher_components=1, student_extra_components=3,
                rbf_width=RBF_WIDTH, device=None):
    """KD-SVD distillation loss between paired lists of [B, H, W, D] feature maps.

    variant: "refined" (refined KD-SVD, default), "eid" (KD-EID) or "eccv" (2018 release).
    gradient: "original" (the authors' SVD gradient of that variant: docs/method.md section 3
    for refined/eid, section 4 for eccv) or "exact" (the true, guarded SVD gradient).
    backend: "linalg_svd" (faithful), "gram" (fastest; its own sign rule), "hybrid"
    (the loss of "linalg_svd", faster) or "batched": see the module docstring.
    teacher_components (K), student_extra_components and rbf_width are the
    refined code's 1, 3 and 8; for "eccv", teacher_components is num_DFV and
    student_extra_components is unused.
    device: where the decompositions run (None: with the rest; see `decomposition_device`).
    Gradients reach the student maps only. Returns a scalar: the sum over taps,
    with no mean and no weight factor, as the original.
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown KD-SVD variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if gradient not in GRADIENTS:
        raise UserError(f"unknown SVD gradient {gradient!r}; choose one of: {', '.join(GRADIENTS)}")
    linalg.check_backend(backend)
    _check_feature_maps(student_feats, teacher_feats)
    teacher_feats = [tf.stop_gradient(t) for t in teacher_feats]
    if variant == "eccv":
        eccv_gradient = "eccv" if gradient == "original" else gradient
        kept = (teacher_components + 1,) * 2
        return _eccv_loss(student_feats, teacher_feats,
                          *_decomposers(variant, eccv_gradient, backend, kept, device),
                          teacher_components, rbf_width, finite_gradient=gradient != "original")
    return _refined_loss(
        student_feats, teacher_feats,
        *_decomposers(variant, gradient, backend,
                      (teacher_components + student_extra_components, teacher_components),
                      device),
        teacher_components, student_extra_components, rbf_width,
    )


@dataclasses.dataclass(frozen=True)
class KDSVDOptions(MethodOptions):
    gradient: str = option(
        "original", "KD-SVD / KD-EID backward pass: original (the authors' formula, faithful) "
        "or exact (the true SVD gradient, guarded against degenerate spectra).",
        flag="svd_gradient", choices=GRADIENTS)
    weight: float = option(1.0, "weight of the KD-SVD term", at_least=0)
    teacher_components: int = option(
        1, "K: the teacher's leading singular vectors kept per tap (num_DFV of the 2018 "
        "release)", at_least=1)
    student_extra_components: int = option(
        3, "student vectors kept beyond K, among which each teacher vector finds its match "
        "(refined and eid)", at_least=0)
    rbf_width: float = option(RBF_WIDTH, "width of the RBF correlation (paper eq. 6)",
                              at_least=1e-12)
    project_student: bool = option(
        False, "KD-SVD: map student taps of another width to the teacher's with a learned "
        "1x1 conv + BN (as the authors' TF2 rewrite).", flag="project_student")
    backend: str = option(
        "linalg_svd", "KD-SVD / KD-EID decomposition, same gradient formulas in all: "
        "linalg_svd (tf.linalg.svd, faithful), gram (eigh of the smaller Gram matrix: fastest "
        "on CPU, its own sign rule, so another loss where tf.linalg.svd's teacher signs "
        "differ), hybrid (tf.linalg.svd only where signs matter: the loss of linalg_svd, "
        "faster) or batched (dense batched operations only, no Svd/Eigh op: the GPU route, "
        "best with --jit; gram's signs). See docs/benchmarks.md.",
        flag="svd_backend", choices=BACKENDS)
    decomposition_device: str = option(
        "auto", "KD-SVD / KD-EID: where the decompositions run. auto (faithful: the host CPU "
        "whenever the step runs on a GPU/TPU, as the authors), cpu, or accelerator (with the "
        "step; use with --svd_backend=batched or gram and --jit).",
        flag="decomposition_device", choices=DECOMPOSITION_DEVICES)


class KDSVD(DistillationMethod):
    """KD-SVD as a registered method: `weight * svd_kd_loss(...)` over the taps,
    with the clipped multi-task gradient of KD_methods_with_TF `op_util.py`.

    project_student: when a student tap is narrower or wider than the teacher's,
    map it to the teacher's width with a learned 1x1 conv + BN first (as the
    authors' TF2 rewrite does); spatial sizes must still match.
    backend: the decomposition, "linalg_svd" (faithful), "gram", "hybrid" or "batched" (see the
    module docstring).
    decomposition_device: "auto" (faithful: the host CPU when the step runs on an
    accelerator), "cpu" or "accelerator" (see `decomposition_device`).
    Feature maps are cast to float32 first: under a mixed-precision policy the
    decompositions and the loss stay in float32.
    """

    Options = KDSVDOptions
    variant = "refined"
    min_taps = 2
    default_gradient_rule = "clip"
    reduction = "sum"

    def build(self, student_out_shape, teacher_out_shape):
        self.projections = []
        for tap, (student, teacher) in enumerate(zip(student_out_shape["features"],
                                                     teacher_out_shape["features"])):
            if not self.options.project_student or student[-1] == teacher[-1]:
                self.projections.append(None)
                continue
            if tuple(student[1:3]) != tuple(teacher[1:3]):
                raise UserError(
                    f"tap {tap}: student map {tuple(student[1:])} and teacher map "
                    f"{tuple(teacher[1:])} differ in spatial size; a 1x1 projection "
                    "only changes the width")
            projection = keras.Sequential([
                keras.layers.Conv2D(teacher[-1], 1, use_bias=False),
                keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
            ], name=f"{self.name}_project{tap}")
            projection.build(tuple(student))
            self.projections.append(projection)

    def call(self, student_out, teacher_out, labels, training=False):
        del labels
        student_feats = [
            tf.cast(feats if projection is None else projection(feats, training=training),
                    tf.float32)
            for projection, feats in zip(self.projections, student_out["features"])
        ]
        teacher_feats = [tf.cast(feats, tf.float32) for feats in teacher_out["features"]]
        options = self.options
        loss = svd_kd_loss(
            student_feats, teacher_feats, self.variant, options.gradient,
            backend=options.backend, teacher_components=options.teacher_components,
            student_extra_components=options.student_extra_components,
            rbf_width=options.rbf_width,
            device=linalg.decomposition_device(options.decomposition_device))
        return {self.name: options.weight * loss}

    def jit_advice(self):
        """XLA lowers `tf.linalg.svd` to a one-sided Jacobi SVD: on a 2-core CPU the
        first compiled step had not finished after 4 minutes even at batch 8
        (docs/benchmarks.md). KD-EID's own route and the "gram" backend use eigh, the
        "batched" backend dense operations only. On an accelerator, placing the
        decompositions on the host CPU (the default) takes them out of the compiled
        step."""
        backend, device = self.options.backend, self.options.decomposition_device
        if self.variant != "eid" and backend not in ("gram", "batched"):
            return (f"{self.name}: --svd_backend={backend} runs tf.linalg.svd, which XLA "
                    "compiles to a slow Jacobi SVD (minutes per step on CPU); with --jit "
                    "prefer --svd_backend=gram or batched (docs/benchmarks.md)")
        if device != "accelerator" and (
                tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")):
            return (f"{self.name}: --decomposition_device={device} runs the "
                    "decompositions on the host CPU, outside the compiled step; with --jit "
                    "use --decomposition_device=accelerator (docs/benchmarks.md)")
        return ""

    @classmethod
    def search_space(cls, hp):
        return {
            "weight": hp.Float("weight", 1e-2, 1e2, sampling="log", default=1.0),
            "clip_scale": hp.Float("clip_scale", 0.1, 10.0, sampling="log", default=1.0),
            "teacher_components": hp.Int("teacher_components", 1, 4, default=1),
            "student_extra_components": hp.Int("student_extra_components", 0, 6, default=3),
            "rbf_width": hp.Float("rbf_width", 1.0, 64.0, sampling="log", default=RBF_WIDTH),
        }


@METHODS.register("svd")
class KDSVDRefined(KDSVD):
    """KD-SVD, the authors' refined version (docs/method.md sections 1 and 3): at least
    two layer pairs, related through the RBF correlation of consecutive taps."""

    variant = "refined"
    library_name = "SVDDistillation"
    role = "default"


@METHODS.register("eid")
class KDEID(KDSVD):
    """KD-EID: KD-SVD through the Gram matrix's eigendecomposition (docs/method.md section 2)."""

    variant = "eid"
    library_name = "EIDDistillation"


@METHODS.register("svd_eccv")
class KDSVDECCV(KDSVD):
    """KD-SVD of the 2018 release (SSKD_SVD), docs/method.md section 4; trained by that
    release's recipe (`--recipe=eccv2018`) unless another is given."""

    variant = "eccv"
    library_name = "SVDECCVDistillation"
    recipe = "eccv2018"
