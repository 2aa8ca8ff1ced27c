"""From the `distillation_losses` a Distiller is given to the one method its train step
runs, and the tap models it reads.

A single sskd_tf loss at weight 1 with the authors' weighting is its own method, so the
command line and the library run the same step. Otherwise the losses become a `LossSet`:
each loss reads its own taps and is weighted, Keras' own losses (`LogitsDistillation`,
`FeatureDistillation`, any `keras.distillation.DistillationLoss`) through `KerasLoss`.
"""
import dataclasses
import re

import keras
import tensorflow as tf

from sskd_tf.distill.base import DistillationMethod
from sskd_tf.distill.stages import Stage, Update
from sskd_tf.errors import UserError
from sskd_tf.losses import MethodLoss
from sskd_tf.taps import has_taps, tap_model

# keras.distillation.Distiller's default weight of the student's task loss.
KERAS_STUDENT_LOSS_WEIGHT = 0.5


def select(outputs, route):
    """The {"logits", "features"} dict with only the features at the indices `route`."""
    return {"logits": outputs["logits"], "features": [outputs["features"][i] for i in route]}


class _TapSelection:
    """A network restricted to some of its taps: what one loss of a `LossSet` sees, called
    and read as a model (its name, its layers and its symbolic output, the features
    restricted likewise), so that a method's `prepare` finds the layers behind its taps."""

    def __init__(self, network, route):
        self.network, self.route = network, route

    def __call__(self, images, training=False):
        return select(self.network(images, training=training), self.route)

    @property
    def name(self):
        return self.network.name

    @property
    def layers(self):
        return self.network.layers

    @property
    def output(self):
        return select(self.network.output, self.route)


def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class KerasLoss(DistillationMethod):
    """Any `keras.distillation.DistillationLoss` as a method: its `compute_loss` on the
    networks' outputs (logits), or on the one layer it names on each side; its gradient
    is summed with the task's, as keras.distillation.Distiller does."""

    def __init__(self, loss, name=None):
        super().__init__(name=name or _snake(type(loss).__name__))
        self.keras_loss = loss
        self.reads_layers = getattr(loss, "teacher_layer_name", None) is not None

    @property
    def reads(self):
        return "features" if self.reads_layers else "logits"

    def _view(self, outputs):
        return outputs["features"][0] if self.reads_layers else outputs["logits"]

    def call(self, student_out, teacher_out, labels, training=False):
        teacher, student = self._view(teacher_out), self._view(student_out)
        self.keras_loss.validate_outputs(teacher, student)
        return {self.name: self.keras_loss.compute_loss(teacher, student)}


def _agreed(values, what, hint):
    values = set(values)
    if len(values) > 1:
        raise UserError(f"the distillation losses disagree on {what} ({sorted(values)}); {hint}")
    return values.pop() if values else None


class LossSet(DistillationMethod):
    """Several distillation methods as one: each reads the taps at its routes (indices
    into the tap models' features), its terms multiplied by its weight. The task loss
    weighs `task_weight`; the gradient rule and the clip scale must agree among the
    methods, or be given (`gradient_rule`). A method that trains in stages cannot be
    combined with others."""

    def __init__(self, methods, loss_weights, routes, task_weight, gradient_rule=None,
                 name="distillation"):
        super().__init__(name=name, clip_scale=_agreed(
            [m.clip_scale for m in methods], "clip_scale", "give every loss the same clip_scale")
            or 1.0)
        staged = [m.name for m in methods if len(m.stages()) > 1]
        if staged and len(methods) > 1:
            raise UserError(f"{', '.join(staged)} trains in stages; it cannot be combined with "
                            "other losses: give it alone, or init_epochs=0")
        self.methods = methods
        self.loss_weights = [float(w) for w in loss_weights]
        self.routes = list(routes)
        self._task_weight = float(task_weight)
        self._given_rule = gradient_rule
        self._gradient_rule = gradient_rule or _agreed(
            [m.gradient_rule for m in methods], "the gradient rule",
            "pass gradient_rule='clip' or 'sum' to the Distiller")
        reductions = {m.reduction for m in methods}
        self.reduction = reductions.pop() if len(reductions) == 1 else "sum"
        self.needs_teacher = any(m.needs_teacher for m in methods)
        self.step_inputs = tuple(sorted({name for m in methods for name in m.step_inputs}))

    @property
    def gradient_rule(self):
        return self._gradient_rule

    @property
    def task_weight(self):
        return self._task_weight

    def stages(self):
        """One main stage by the agreed rule; a single method's own stages (their rule
        replaced where the Distiller was given one), whose losses must be its `call`."""
        if len(self.methods) > 1:
            return (Stage(updates=(Update(rule=self.gradient_rule),)),)
        stages = self.methods[0].stages()
        updates = [update for stage in stages for update in stage.updates]
        other = [u.distillation for u in updates if u.distillation not in (None, "call")]
        if other or len(updates) > len(stages):
            raise UserError(f"{self.methods[0].name} trains by updates of its own: give it "
                            "alone, at weight 1 and without student_loss_weight")
        if self._given_rule is None:
            return stages
        return tuple(dataclasses.replace(stage, updates=tuple(
            dataclasses.replace(u, rule=self._given_rule) if u.task and u.distillation else u
            for u in stage.updates)) for stage in stages)

    def call(self, student_out, teacher_out, labels, training=False, **step_inputs):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        terms = {}
        for method, weight, (teacher_route, student_route) in zip(
                self.methods, self.loss_weights, self.routes):
            method_terms = method(select(student_out, student_route),
                                  None if teacher_out is None else select(teacher_out,
                                                                         teacher_route),
                                  labels, training=training,
                                  **{name: step_inputs[name] for name in method.step_inputs})
            for name, value in method_terms.items():
                if method.reduction != self.reduction:
                    value = value / replicas
                terms[_unique(name, terms)] = weight * value
        return terms

    def prepare(self, teacher, train_ds):
        for method, (teacher_route, _) in zip(self.methods, self.routes):
            method.prepare(_TapSelection(teacher, teacher_route),
                           _batches_of(train_ds, method.batch_inputs()))

    def jit_advice(self):
        return "; ".join(advice for advice in (m.jit_advice() for m in self.methods) if advice)


def _batches_of(train_ds, inputs):
    """The batches of `train_ds` with only the batch inputs `inputs` of one method of a
    LossSet (its images alone when it reads none): each method's `prepare` sees the batches
    it would see alone."""
    spec = train_ds.element_spec if isinstance(train_ds, tf.data.Dataset) else None
    if not (isinstance(spec, tuple) and isinstance(spec[0], dict)):
        return train_ds
    if not inputs:
        return train_ds.map(lambda batch, labels: (batch["images"], labels))
    return train_ds.map(lambda batch, labels: (
        {name: batch[name] for name in ("images",) + tuple(inputs)}, labels))


def _unique(name, taken):
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def _layer_names(loss, side):
    """The layer names `loss` reads on `side` ("teacher" or "student"), or None."""
    if isinstance(loss, MethodLoss):
        return getattr(loss, f"{side}_layer_names")
    single = getattr(loss, f"{side}_layer_name", None)
    return None if single is None else [single]


def _reads_logits(loss):
    if isinstance(loss, MethodLoss):
        return loss.reads_logits
    return getattr(loss, "teacher_layer_name", None) is None


def _routes(losses, side, model):
    """Per loss the indices of its taps in the tap model of `model`, and the tap
    model's layer names: every named layer once, after the model's own taps."""
    own = len(model.output["features"]) if has_taps(model) else 0
    names, routes = [], []
    for loss in losses:
        layer_names = _layer_names(loss, side)
        if layer_names is None:
            if own == 0 and not _reads_logits(loss):
                raise UserError(f"{type(loss).__name__} reads feature maps: give it "
                                "teacher_layer_names and student_layer_names")
            routes.append([] if _reads_logits(loss) else list(range(own)))
            continue
        for name in layer_names:
            if name not in names:
                names.append(name)
        routes.append([own + names.index(name) for name in layer_names])
    return names, routes


def as_loss_list(distillation_losses, distillation_loss_weights):
    """(losses, weights) as lists; None or [] losses: none (the student trains alone)."""
    if distillation_losses is None:
        losses = []
    elif isinstance(distillation_losses, (list, tuple)):
        losses = list(distillation_losses)
    else:
        losses = [distillation_losses]
    for loss in losses:
        if not isinstance(loss, keras.distillation.DistillationLoss):
            raise UserError(f"distillation_losses: {type(loss).__name__} is not a "
                            "keras.distillation.DistillationLoss (give sskd_tf.losses or "
                            "keras.distillation losses)")
    weights = [1.0] * len(losses) if distillation_loss_weights is None else [
        float(w) for w in distillation_loss_weights]
    if len(weights) != len(losses):
        raise UserError(f"{len(weights)} distillation_loss_weights for {len(losses)} losses")
    return losses, weights


def assemble(teacher, student, losses, weights, student_loss_weight, gradient_rule):
    """(method, teacher_taps, student_taps): the one method of the train step and the tap
    models it reads (teacher_taps None when no loss needs the teacher).

    student_loss_weight None: the authors' weighting (the task loss weighs what the
    methods say, each loss its weight), unless a Keras loss is among them, which takes
    Keras' 0.5. A number w in [0, 1]: keras.distillation.Distiller's, the task loss times
    w and each loss times (1 - w) and its weight."""
    if student_loss_weight is None and any(not isinstance(l, MethodLoss) for l in losses):
        student_loss_weight = KERAS_STUDENT_LOSS_WEIGHT
    if student_loss_weight is not None and not 0.0 <= student_loss_weight <= 1.0:
        raise UserError(f"student_loss_weight={student_loss_weight}; give a number in [0, 1]")
    methods = [loss.method if isinstance(loss, MethodLoss) else KerasLoss(loss)
               for loss in losses]
    needs_teacher = any(m.needs_teacher for m in methods)
    if needs_teacher and teacher is None:
        raise UserError(f"{', '.join(m.name for m in methods if m.needs_teacher)} needs a "
                        "teacher")
    for loss, method in zip(losses, methods):
        if not isinstance(loss, MethodLoss) and teacher is not None:
            loss.validate_model_compatibility(teacher, student)
    student_names, student_routes = _routes(losses, "student", student)
    student_taps = tap_model(student, student_names, "student")
    teacher_taps, teacher_routes = None, [[] for _ in losses]
    if needs_teacher:
        teacher_names, teacher_routes = _routes(losses, "teacher", teacher)
        teacher_taps = tap_model(teacher, teacher_names, "teacher")
    routes = list(zip(teacher_routes, student_routes))
    if (len(methods) == 1 and weights == [1.0] and student_loss_weight is None
            and gradient_rule is None and _is_identity(routes[0], teacher_taps, student_taps)):
        return methods[0], teacher_taps, student_taps
    if student_loss_weight is None:
        task_weight = _agreed([m.task_weight for m in methods], "the weight of the student's "
                              "task loss", "pass student_loss_weight to the Distiller")
        task_weight = 1.0 if task_weight is None else task_weight
    else:
        task_weight = student_loss_weight
        weights = [(1.0 - student_loss_weight) * weight for weight in weights]
    return (LossSet(methods, weights, routes, task_weight, gradient_rule), teacher_taps,
            student_taps)


def _is_identity(route, teacher_taps, student_taps):
    """Whether a loss's routes read every tap of both tap models, in order."""
    teacher_route, student_route = route
    student_all = list(range(len(student_taps.output["features"]))) if has_taps(
        student_taps) else []
    teacher_all = student_all if teacher_taps is None else (
        list(range(len(teacher_taps.output["features"]))) if has_taps(teacher_taps) else [])
    reads_nothing = not student_route and not teacher_route
    return reads_nothing or (student_route == student_all and (
        teacher_taps is None or teacher_route == teacher_all))
