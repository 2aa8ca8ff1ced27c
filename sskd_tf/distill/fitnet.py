"""FitNet: hints from the teacher's intermediate feature maps.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015 (arXiv 1412.6550), eq. 3: L_HT = 1/2 ||u_h(x) - r(v_g(x))||^2,
the student's guided layer v_g passed through a learned regressor r to the width
of the teacher's hint layer u_h.

Followed: KD_methods_with_TF `nets/Multiple.py` (one hint per tap, mean squared
error, taps summed, no weight factor), `train_w_distill.py` and `op_util.py`
(40 epochs of hint initialisation on the distillation and weight-decay gradients
only, then plain cross-entropy training without hints; `train_w_distill.py` means
to reset the optimizer's momentum between the phases, but its variable-name test
never matches, so the momentum carries over). Differences:

- the authors' regressor maps the *teacher* tap to the student's width (a
  trainable no-bias fully connected layer on the channel axis); as in the paper,
  this port maps the student tap to the teacher's width with a no-bias 1x1 conv.
  Only taps of different widths get one, so ResNet32 -> ResNet8 (equal widths)
  has none either way;
- the paper hints one middle layer; the authors (and this port) hint every tap;
- the hint is the element mean of the squared difference (the authors'), not
  the paper's half sum.
"""
import dataclasses

import keras
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.stages import Stage, Update
from sskd_tf.errors import UserError

AUTHORS_INIT_EPOCHS = 40


def width_regressor(width):
    """No-bias linear 1x1 conv to `width` channels, He-initialised on fan-out as
    the authors' layers (KD_methods_with_TF `ResNet_arg_scope`)."""
    return keras.layers.Conv2D(
        width,
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
    )


def build_regressors(student_shapes, teacher_shapes):
    """One regressor per tap whose student width differs from the teacher's, else
    None. Taps must agree in spatial size."""
    if len(student_shapes) != len(teacher_shapes):
        raise UserError(
            f"the student has {len(student_shapes)} taps and the teacher {len(teacher_shapes)}"
        )
    regressors = []
    for tap, (student, teacher) in enumerate(zip(student_shapes, teacher_shapes)):
        if tuple(student[1:3]) != tuple(teacher[1:3]):
            raise UserError(
                f"tap {tap}: student map {tuple(student[1:])} and teacher map "
                f"{tuple(teacher[1:])} must have the same spatial size"
            )
        if student[-1] == teacher[-1]:
            regressors.append(None)
            continue
        regressor = width_regressor(teacher[-1])
        regressor.build(tuple(student))
        regressors.append(regressor)
    return regressors


def apply_regressors(regressors, student_features):
    return [
        feature if regressor is None else regressor(feature)
        for regressor, feature in zip(regressors, student_features)
    ]


def hint_loss(student_features, teacher_features):
    """Sum over taps of the element mean of (student - teacher)^2; the student
    maps already regressed to the teacher's widths, the teacher gets no gradient."""
    return tf.add_n(
        [
            tf.reduce_mean(tf.square(student - tf.stop_gradient(teacher)))
            for student, teacher in zip(student_features, teacher_features)
        ]
    )


def initialisation_stages(init_epochs):
    """KD_methods_with_TF `Optimizer_w_Initializer` (FitNet, FSP): `init_epochs` epochs on
    the distillation loss and the weight decay of the variables it reaches, then the
    run's epochs on the task alone, with one optimizer whose momentum carries over (the
    authors' `train_w_distill.py` means to reset it at the switch, but its variable-name
    test never matches). The learning rate decays inside the second stage only."""
    return (Stage("init", epochs=init_epochs, updates=(Update(task=False),)),
            Stage(updates=(Update(distillation=None),)))


@dataclasses.dataclass(frozen=True)
class FitNetOptions(MethodOptions):
    weight: float = option(1.0, "weight of the hint term", at_least=0)
    init_epochs: int = option(
        AUTHORS_INIT_EPOCHS, "epochs of hint-only initialisation before the task alone (the "
        "authors' 40); 0: hints and task together throughout", at_least=0)


@METHODS.register("fitnet")
class FitNet(DistillationMethod):
    """FitNet hints (Romero et al., ICLR 2015), with a learned 1x1 regressor where widths
    differ. The authors' recipe first trains on the hints alone for `init_epochs=40`
    epochs, then on the task alone; `init_epochs=0`: plain multi-task CE + weight * hints
    throughout."""

    Options = FitNetOptions
    library_name = "FitNetDistillation"

    def stages(self):
        if self.options.init_epochs:
            return initialisation_stages(self.options.init_epochs)
        return super().stages()

    def build(self, student_out_shape, teacher_out_shape):
        self.regressors = build_regressors(
            student_out_shape["features"], teacher_out_shape["features"]
        )

    def call(self, student_out, teacher_out, labels, training=False):
        student_features = apply_regressors(self.regressors, student_out["features"])
        return {"hint": self.options.weight * hint_loss(student_features, teacher_out["features"])}

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 1e-2, 1e2, sampling="log", default=1.0)}
