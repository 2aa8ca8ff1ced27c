"""Every teacher-student distillation method as a `keras.distillation.DistillationLoss`.

Each class wraps the registered method of `sskd_tf.distill` (its math lives there,
once) and names the layers it reads:

- multi-layer losses take `teacher_layer_names=[...]`, `student_layer_names=[...]`
  (paired in order) and run in `sskd_tf.Distiller`;
- single-pair losses (`AttentionDistillation`, `FitNetDistillation`,
  `SoftLogitsDistillation`) also take `teacher_layer_name` / `student_layer_name`,
  so that they work inside `keras.distillation.Distiller` as well.

Keyword options are the method's own (docs/methods.md), e.g.
`SVDDistillation(..., backend="gram")`. `gradient_rule` ("clip": the authors'
clipped multi-task update, docs/method.md section 5; "sum": added to the task
gradient) overrides the method's default; `sskd_tf.Distiller` honours it,
`keras.distillation.Distiller` always sums.

Left out: "none" and "self_distill", which learn without a teacher.
"""
import keras

from sskd_tf.distill import METHODS


class MethodLoss(keras.distillation.DistillationLoss):
    """A registered method (`method_name`) as a distillation loss.

    `reads_logits`: the method compares the networks' outputs, not feature maps.
    `single_pair`: the method can work on one pair of layers.
    """

    method_name = None
    reads_logits = False
    single_pair = False

    def __init__(self, teacher_layer_names=None, student_layer_names=None, *,
                 teacher_layer_name=None, student_layer_name=None, gradient_rule=None,
                 name=None, **options):
        if teacher_layer_name is not None or student_layer_name is not None:
            if not self.single_pair:
                raise TypeError(f"{type(self).__name__} compares several layers: give "
                                "teacher_layer_names=[...] and student_layer_names=[...]")
            if teacher_layer_names is not None or student_layer_names is not None:
                raise TypeError("give either the singular or the plural layer names, not both")
            teacher_layer_names = None if teacher_layer_name is None else [teacher_layer_name]
            student_layer_names = None if student_layer_name is None else [student_layer_name]
        self.teacher_layer_names = _names(teacher_layer_names)
        self.student_layer_names = _names(student_layer_names)
        if (self.teacher_layer_names is None) != (self.student_layer_names is None) or (
                self.teacher_layer_names is not None
                and len(self.teacher_layer_names) != len(self.student_layer_names)):
            raise ValueError(f"{type(self).__name__}: teacher_layer_names "
                             f"{self.teacher_layer_names} and student_layer_names "
                             f"{self.student_layer_names} must pair one to one")
        if self.single_pair:
            self.teacher_layer_name = _single(self.teacher_layer_names)
            self.student_layer_name = _single(self.student_layer_names)
        self.method = METHODS.get(self.method_name)(name=name or self.method_name, **options)
        if gradient_rule is not None:
            if gradient_rule not in ("clip", "sum"):
                raise ValueError(f"gradient_rule must be 'clip' or 'sum', got {gradient_rule!r}")
            self.method.gradient_rule = gradient_rule

    @property
    def name(self):
        return self.method.name

    def network_view(self, outputs):
        """The {"logits", "features"} dict the method reads, from what a distiller
        hands over: that dict itself, or one layer's output (keras.distillation)."""
        if isinstance(outputs, dict):
            return outputs
        if self.reads_logits:
            return {"logits": outputs, "features": []}
        return {"features": list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]}

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Teacher and student maps may differ in width (methods with a regressor)."""

    def compute_loss(self, teacher_outputs, student_outputs, labels=None, training=True, **kwargs):
        """The sum of the method's (already weighted) terms."""
        terms = self.method(self.network_view(student_outputs), self.network_view(teacher_outputs),
                            labels, training=training)
        return sum(terms.values()) if terms else 0.0


def _names(names):
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


def _single(names):
    return names[0] if names and len(names) == 1 else None


class SVDDistillation(MethodLoss):
    """KD-SVD, the authors' refined version (docs/method.md sections 1 and 3): at least
    two layer pairs, related through the RBF correlation of consecutive taps."""

    method_name = "svd"


class EIDDistillation(MethodLoss):
    """KD-EID: KD-SVD through the Gram matrix's eigendecomposition (docs/method.md section 2)."""

    method_name = "eid"


class SVDECCVDistillation(MethodLoss):
    """KD-SVD as released with the ECCV 2018 paper (docs/method.md section 4)."""

    method_name = "svd_eccv"


class FSPDistillation(MethodLoss):
    """FSP matrices of consecutive taps (Yim et al., CVPR 2017); at least two pairs."""

    method_name = "fsp"


class RdimDistillation(MethodLoss):
    """Feature matching in a reduced-dimension subspace of the teacher's taps.
    `projection="pca"` estimates the subspace from the training data in `fit`."""

    method_name = "rdim"


class AttentionDistillation(MethodLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): spatial attention maps
    of each pair compared; widths may differ, spatial sizes must match."""

    method_name = "at"
    single_pair = True


class FitNetDistillation(MethodLoss):
    """FitNet hints (Romero et al., ICLR 2015), with a learned 1x1 regressor where
    widths differ (trained by `sskd_tf.Distiller` only). The authors' recipe first
    trains on the hints alone for `init_epochs=40` epochs, in `sskd_tf.Distiller`;
    pass `init_epochs=0` for plain multi-task training."""

    method_name = "fitnet"
    single_pair = True


class SoftLogitsDistillation(MethodLoss):
    """Hinton's soft logits, KL(teacher || student) at `temperature`, weighted by
    `kd_weight`; reads the networks' outputs (logits)."""

    method_name = "soft_logits"
    reads_logits = True
    single_pair = True


LOSSES = {cls.method_name: cls for cls in (
    SVDDistillation, EIDDistillation, SVDECCVDistillation, FSPDistillation, RdimDistillation,
    AttentionDistillation, FitNetDistillation, SoftLogitsDistillation)}
