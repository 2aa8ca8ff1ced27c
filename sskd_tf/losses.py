"""Every registered distillation method as a `keras.distillation.DistillationLoss`.

The classes are derived from the methods' declarations (distill/base.py): a method
whose class names a `library_name` gets a loss class of that name here, documented by
the method's docstring, taking its options as keywords (docs/methods.md), e.g.
`SVDDistillation(..., backend="gram")`, `gradient_rule="sum"`. Each loss names the
layers it reads:

- losses that compare feature maps take `teacher_layer_names=[...]`,
  `student_layer_names=[...]` (paired in order) and run in `sskd_tf.Distiller`;
- losses that can work on one pair of layers, or on the networks' outputs (logits),
  also take `teacher_layer_name` / `student_layer_name` (or nothing, for logits), so
  that they work inside `keras.distillation.Distiller` as well, which sums their
  gradient with the task's and does not train the losses' own layers.
"""
import keras

from sskd_tf.distill import METHODS

PACKAGE = "sskd_tf"


def _names(names):
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


def _single(names):
    return names[0] if names and len(names) == 1 else None


def _single_pair(method_class):
    """Whether a method can work on one pair of layers, or on the networks' outputs."""
    return method_class.reads == "logits" or method_class.min_taps <= 1


class MethodLoss(keras.distillation.DistillationLoss):
    """A distillation method as a distillation loss; the generated subclasses set
    `method_name` and build the method from their options. `method`: the method layer."""

    method_name = None

    def __init__(self, teacher_layer_names=None, student_layer_names=None, *,
                 teacher_layer_name=None, student_layer_name=None, name=None, **options):
        method_class = METHODS.get(self.method_name)
        if teacher_layer_name is not None or student_layer_name is not None:
            if not _single_pair(method_class):
                raise TypeError(f"{type(self).__name__} compares at least "
                                f"{method_class.min_taps} layers: give teacher_layer_names=[...] "
                                "and student_layer_names=[...]")
            if teacher_layer_names is not None or student_layer_names is not None:
                raise TypeError("give either the singular or the plural layer names, not both")
            teacher_layer_names = None if teacher_layer_name is None else [teacher_layer_name]
            student_layer_names = None if student_layer_name is None else [student_layer_name]
        self._name_layers(method_class, teacher_layer_names, student_layer_names)
        self.method = method_class(name=name or self.method_name, **options)

    @classmethod
    def of(cls, method, teacher_layer_names=None, student_layer_names=None):
        """The loss face of an existing method layer `method`."""
        loss = cls.__new__(cls)
        loss._name_layers(type(method), teacher_layer_names, student_layer_names)
        loss.method = method
        return loss

    def _name_layers(self, method_class, teacher_layer_names, student_layer_names):
        self.teacher_layer_names = _names(teacher_layer_names)
        self.student_layer_names = _names(student_layer_names)
        if (self.teacher_layer_names is None) != (self.student_layer_names is None) or (
                self.teacher_layer_names is not None
                and len(self.teacher_layer_names) != len(self.student_layer_names)):
            raise ValueError(f"{type(self).__name__}: teacher_layer_names "
                             f"{self.teacher_layer_names} and student_layer_names "
                             f"{self.student_layer_names} must pair one to one")
        single = _single_pair(method_class)
        self.teacher_layer_name = _single(self.teacher_layer_names) if single else None
        self.student_layer_name = _single(self.student_layer_names) if single else None

    @property
    def reads_logits(self):
        return self.method.reads == "logits"

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

    def get_config(self):
        return {"teacher_layer_names": self.teacher_layer_names,
                "student_layer_names": self.student_layer_names, "name": self.method.name,
                **self.method.options.as_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _loss_class(method_name):
    """The DistillationLoss class of the registered method `method_name`."""
    method_class = METHODS.get(method_name)
    loss_class = type(method_class.library_name, (MethodLoss,), {
        "method_name": method_name, "__module__": __name__, "__doc__": method_class.__doc__})
    return keras.saving.register_keras_serializable(package=PACKAGE)(loss_class)


LOSS_CLASSES = {name: _loss_class(name) for name in METHODS.names()}
globals().update({loss_class.__name__: loss_class for loss_class in LOSS_CLASSES.values()})
__all__ = ["MethodLoss", "loss_of", *sorted(cls.__name__ for cls in LOSS_CLASSES.values())]


def loss_of(method, teacher_layer_names=None, student_layer_names=None):
    """The loss face of the method layer `method` (how the command line hands its method
    to the Distiller): its registered class's, or MethodLoss for one not registered."""
    registered = [name for name in METHODS.names() if METHODS.get(name) is type(method)]
    loss_class = LOSS_CLASSES[registered[0]] if registered else MethodLoss
    return loss_class.of(method, teacher_layer_names, student_layer_names)
