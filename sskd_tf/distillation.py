"""`sskd_tf.Distiller`: distil any functional or sequential Keras model, in the idiom
of `keras.distillation.Distiller`.

It wraps the teacher and the student into tap models (`sskd_tf.taps`) that read the
layers the losses name, gathers the losses into one `LossSet` method, and hands
both to the training distiller (`sskd_tf.training.distiller.Distiller`), whose
train step is the command line's: one code path.
"""
import keras
import tensorflow as tf

from sskd_tf.distill.base import DistillationMethod
from sskd_tf.errors import UserError
from sskd_tf.losses import MethodLoss
from sskd_tf.taps import has_taps, tap_model
from sskd_tf.training import distiller as training


class _TapSelection:
    """A network restricted to some of its taps: what one loss of a `LossSet` sees."""

    def __init__(self, network, route):
        self.network, self.route = network, route

    def __call__(self, images, training=False):
        return select(self.network(images, training=training), self.route)


def select(outputs, route):
    """The {"logits", "features"} dict with only the features at the indices `route`."""
    return {"logits": outputs["logits"], "features": [outputs["features"][i] for i in route]}


def _agreed(values, what, hint):
    values = set(values)
    if len(values) > 1:
        raise UserError(f"the distillation losses disagree on {what} ({sorted(values)}); {hint}")
    return values.pop() if values else None


class LossSet(DistillationMethod):
    """Several distillation losses as one method of the train step.

    Each loss reads the taps at its routes (indices into the tap models' features)
    and its terms are multiplied by its weight. The training attributes of the
    losses' methods (gradient rule, clip scale, initialisation epochs, weight of the
    task loss) must agree, or be given: `gradient_rule`, `student_loss_weight`.
    """

    def __init__(self, losses, loss_weights, teacher_routes, student_routes, gradient_rule=None,
                 student_loss_weight=None, **kwargs):
        methods = [loss.method for loss in losses]
        super().__init__(
            clip_scale=_agreed([m.clip_scale for m in methods], "clip_scale",
                               "give every loss the same clip_scale") or 1.0,
            init_epochs=_agreed([m.init_epochs for m in methods], "init_epochs",
                                "give every loss the same init_epochs") or 0,
            **kwargs)
        self.methods = methods
        self.loss_weights = [float(w) for w in loss_weights]
        self.routes = list(zip(teacher_routes, student_routes))
        self.gradient_rule = gradient_rule or _agreed(
            [m.gradient_rule for m in methods], "the gradient rule",
            "pass gradient_rule='clip' or 'sum' to the Distiller")
        self.ce_weight = student_loss_weight if student_loss_weight is not None else _agreed(
            [m.ce_weight for m in methods], "the weight of the student's task loss",
            "pass student_loss_weight to the Distiller")
        reductions = {m.reduction for m in methods}
        self.reduction = reductions.pop() if len(reductions) == 1 else "sum"

    def call(self, student_out, teacher_out, labels, training=False):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        terms = {}
        for method, weight, (teacher_route, student_route) in zip(
                self.methods, self.loss_weights, self.routes):
            method_terms = method(select(student_out, student_route),
                                  select(teacher_out, teacher_route), labels, training=training)
            for name, value in method_terms.items():
                if method.reduction != self.reduction:
                    value = value / replicas
                terms[_unique(name, terms)] = weight * value
        return terms

    def prepare(self, teacher, train_ds):
        for method, (teacher_route, _) in zip(self.methods, self.routes):
            method.prepare(_TapSelection(teacher, teacher_route), train_ds)

    def jit_advice(self):
        return "; ".join(advice for advice in (m.jit_advice() for m in self.methods) if advice)


def _unique(name, taken):
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def _routes(losses, side, model):
    """Per loss the indices of its taps in the tap model of `model`, and the tap
    model's layer names: every named layer once, after the model's own taps."""
    own = len(model.output["features"]) if has_taps(model) else 0
    names, routes = [], []
    for loss in losses:
        layer_names = getattr(loss, f"{side}_layer_names")
        if layer_names is None:
            if own == 0 and not loss.reads_logits:
                raise UserError(f"{type(loss).__name__} reads feature maps: give it "
                                "teacher_layer_names and student_layer_names")
            routes.append([] if loss.reads_logits else list(range(own)))
            continue
        for name in layer_names:
            if name not in names:
                names.append(name)
        routes.append([own + names.index(name) for name in layer_names])
    return names, routes


class Distiller(training.Distiller):
    """Trains `student` to imitate a frozen `teacher` through `distillation_losses`
    (`sskd_tf.losses`), while it learns its task from the labels.

    teacher, student: functional or sequential Keras models with one output (the
    class scores); their taps are read by the layer names the losses give. The
    student is trained in place; `teacher.trainable` is set to False and nothing
    else of either model changes.
    distillation_losses: one `sskd_tf.losses` loss or a list of them;
    distillation_loss_weights multiplies each (default 1).
    student_loss_weight: weight of the task loss; None takes the losses' own (1,
    or 1 - kd_weight for soft logits).
    gradient_rule: "clip" (the authors' clipped multi-task update, docs/method.md
    section 5; the SVD family's default) or "sum"; None takes the losses' own.
    clip_rule: "kd_methods" (default) or "eccv2018", see `training.distiller.clip_threshold_scale`.
    steps_in_epoch: None derives it from the data at `fit` (it sets the epoch of
    the clip rule). sync_batch_norm: under a strategy of several replicas, the
    student's and the losses' batch-norm layers normalise over the global batch (it
    sets their `synchronized`; see `training.distiller.Distiller`).

    Compile as usual: `compile(optimizer, loss=..., metrics=[...])`; `loss` is the
    task loss on the student's output (default: sparse cross-entropy on logits) and
    labels are class indices. `fit` reports `loss`, `ce_loss` (the task loss),
    `wd_loss` (the student's regularisers), `kd_loss`, one `<name>_loss` per loss
    term, `clip_ratio` and the metrics.
    """

    def __init__(self, teacher, student, distillation_losses, distillation_loss_weights=None, *,
                 student_loss_weight=None, gradient_rule=None, clip_rule="kd_methods",
                 steps_in_epoch=None, sync_batch_norm=False, name="distiller", **kwargs):
        losses = (list(distillation_losses) if isinstance(distillation_losses, (list, tuple))
                  else [distillation_losses])
        if not losses or not all(isinstance(loss, MethodLoss) for loss in losses):
            raise UserError("distillation_losses: give one or more sskd_tf.losses objects")
        weights = [1.0] * len(losses) if distillation_loss_weights is None else list(
            distillation_loss_weights)
        if len(weights) != len(losses):
            raise UserError(f"{len(weights)} distillation_loss_weights for {len(losses)} losses")
        teacher_names, teacher_routes = _routes(losses, "teacher", teacher)
        student_names, student_routes = _routes(losses, "student", student)
        teacher.trainable = False
        method = LossSet(losses, weights, teacher_routes, student_routes, gradient_rule,
                         student_loss_weight, name="distillation")
        super().__init__(tap_model(student, student_names, "student"), method,
                         tap_model(teacher, teacher_names, "teacher"),
                         steps_in_epoch=steps_in_epoch, clip_rule=clip_rule,
                         sync_batch_norm=sync_batch_norm, name=name, **kwargs)
        self.distillation_losses = losses
        self._prepared = False
        self.build((None,) + tuple(student.inputs[0].shape[1:]))

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """Keras' fit; the first call also lets the losses look at the training data
        (e.g. RdimDistillation(projection="pca"))."""
        if not self._prepared:
            data = x
            if not isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
                data = tf.data.Dataset.from_tensor_slices(x).batch(batch_size or 32)
            self.method.prepare(self.teacher, data)
            self._prepared = True
        return super().fit(x, y, batch_size=batch_size, **kwargs)
