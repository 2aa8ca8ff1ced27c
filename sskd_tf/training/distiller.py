"""`sskd_tf.Distiller`: a drop-in for `keras.distillation.Distiller` whose train step is
the authors' (training/train_step.py); the command line builds the same object.

It takes the teacher, the student and the distillation losses as Keras' does
(`sskd_tf.losses`, Keras' own `LogitsDistillation` / `FeatureDistillation`, or any
`keras.distillation.DistillationLoss`), reads the layers the losses name through tap
models that share the networks' layers (`sskd_tf.taps`), and keeps `.student` and
`.teacher` the models it was given.
"""
import keras
import tensorflow as tf

from sskd_tf.errors import UserError
from sskd_tf.training import loss_set
from sskd_tf.training.schedule import EpochCut
from sskd_tf.training.train_step import _TrainStep

PACKAGE = "sskd_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Distiller(_TrainStep):
    """Trains `student` to imitate a frozen `teacher` through `distillation_losses` while it
    learns its task from the labels, by the authors' multi-task update.

    teacher, student: Keras models with one output (the class scores), or the built-in
    networks (whose output is {"logits", "features"}); the losses read the layers they
    name, which needs functional or sequential models; a loss of the outputs alone
    (logits) also takes subclassed ones. teacher may be None when no loss needs one.
    The student is trained in place; `teacher.trainable` is set to False (unless a
    loss trains it: mutual learning).
    distillation_losses: one loss or a list (None or []: the student trains alone);
    distillation_loss_weights multiplies each (default 1).
    student_loss_weight: None (default), the authors' weighting: the task loss weighs
    what the losses' methods say (1, or 1 - kd_weight for soft logits) and the losses
    their weights; with a Keras loss among them, Keras' 0.5. A number w in [0, 1]:
    keras.distillation.Distiller's, w times the task loss plus (1 - w) times the
    weighted losses. Unlike Keras', the student's regularisation losses (its weight
    decay) are always added.
    gradient_rule: "clip" (the authors' clipped multi-task update, docs/method.md
    section 5; the SVD family's default) or "sum"; None takes the losses' own.
    clip_rule: "kd_methods" (default) or "eccv2018", see `train_step.clip_threshold_scale`.
    epoch_cut: the `training.schedule.EpochCut` of the run (the command line's);
    steps_in_epoch: epochs of that many steps; neither: derived from the data at `fit`
    (the epoch drives the clip rule and the stages). sync_batch_norm: under a strategy of
    several replicas, the student's and the losses' batch-norm layers normalise over the
    global batch.

    Compile as usual: `compile(optimizer, loss=..., metrics=[...])`; `loss` is the task
    loss on the student's output (default: sparse cross-entropy on logits) and labels are
    class indices. `fit` reports `loss`, `ce_loss` (the task loss), `wd_loss` (the
    regularisers), `kd_loss`, one `<name>_loss` per loss term, `clip_ratio` and the
    metrics. A loss that trains in stages (FitNet's initialisation) switches stage at
    epoch boundaries.
    """

    def __init__(self, teacher, student, distillation_losses=None,
                 distillation_loss_weights=None, student_loss_weight=None, name="distiller", *,
                 gradient_rule=None, clip_rule="kd_methods", epoch_cut=None,
                 steps_in_epoch=None, sync_batch_norm=False, **kwargs):
        if not isinstance(student, keras.Model) or not (
                teacher is None or isinstance(teacher, keras.Model)):
            raise UserError("teacher and student must be keras.Model instances")
        losses, weights = loss_set.as_loss_list(distillation_losses, distillation_loss_weights)
        if gradient_rule not in (None, "sum", "clip"):
            raise UserError(f"gradient_rule={gradient_rule!r}; choose sum or clip")
        method, teacher_taps, student_taps = loss_set.assemble(
            teacher, student, losses, weights, student_loss_weight, gradient_rule)
        if epoch_cut is None and steps_in_epoch is not None:
            epoch_cut = EpochCut.of_steps(steps_in_epoch)
        super().__init__(student_taps, method, teacher_taps, epoch_cut=epoch_cut,
                         clip_rule=clip_rule, sync_batch_norm=sync_batch_norm, name=name,
                         **kwargs)
        self.teacher = teacher
        self.student = student
        if teacher is not None:
            teacher.trainable = self.stage_plan.trains("teacher")
        self.distillation_losses = losses
        self.distillation_loss_weights = weights
        self.student_loss_weight = student_loss_weight
        self.gradient_rule = gradient_rule
        self._prepared = False
        inputs = getattr(student, "inputs", None)
        if inputs:
            self.build((None,) + tuple(inputs[0].shape[1:]))

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """Keras' fit; the first call also lets the losses look at the training data
        (e.g. RdimDistillation(projection="pca")), and builds a distiller of subclassed
        models from the first batch."""
        if not self._prepared:
            data = x
            if not isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
                data = tf.data.Dataset.from_tensor_slices(x).batch(batch_size or 32)
            if not self.built:
                first = next(iter(data))
                images = first[0] if isinstance(first, (tuple, list)) else first
                self.build((None,) + tuple(images.shape[1:]))
            self.method.prepare(self._teacher_net, data)
            self._prepared = True
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "teacher": None if self.teacher is None else keras.saving.serialize_keras_object(
                self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "distillation_losses": [keras.saving.serialize_keras_object(loss)
                                    for loss in self.distillation_losses],
            "distillation_loss_weights": self.distillation_loss_weights,
            "student_loss_weight": self.student_loss_weight,
            "gradient_rule": self.gradient_rule,
            "clip_rule": self.clip_rule,
            "sync_batch_norm": self.sync_batch_norm,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student"):
            if config[key] is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        config["distillation_losses"] = [keras.saving.deserialize_keras_object(loss)
                                         for loss in config["distillation_losses"]]
        return cls(**config)
