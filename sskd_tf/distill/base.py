"""The contract every distillation method fulfils, and the registry that holds them.

A method is a Keras layer so that any auxiliary layers it owns (regressors,
projections, extra classifier heads) are tracked, checkpointed and trained with
the student. The training step calls it with both networks' outputs and adds
the returned terms to the distillation loss.
"""
import inspect

import keras

from sskd_tf.errors import UserError
from sskd_tf.registry import Registry

METHODS = Registry("distillation method")


class DistillationMethod(keras.layers.Layer):
    """Base class of a registered distillation method.

    Class attributes tell the training step how to use the method:

    - `needs_teacher`: False for methods that learn without a teacher network.
    - `gradient_rule`: "sum" adds the distillation gradient to the task gradient;
      "clip" applies the multi-task rule of KD_methods_with_TF `op_util.py`
      (docs/method.md section 5): per student variable the distillation gradient is clipped
      by norm to `clip_scale * ||g_ce|| * sigmoid(epoch)`.
    - `ce_weight`: weight of the student's cross-entropy in the total loss.
    - `reduction`: "mean" when the terms average over the batch, "sum" when they
      add over it (KD-SVD); tells the distributed step how to split them.
    - `recipe`: the training recipe the method's code comes with (training/recipes.py),
      which a run takes unless one is given; None: the default recipe.

    `call(student_out, teacher_out, labels, training)` receives the model output
    dicts `{"logits": ..., "features": [...]}` (`teacher_out` is None when
    `needs_teacher` is False) and returns a dict of named, already weighted
    scalar loss terms. Their sum is the distillation loss.
    """

    needs_teacher = True
    gradient_rule = "sum"
    ce_weight = 1.0
    reduction = "mean"
    recipe = None

    def __init__(self, clip_scale=1.0, init_epochs=0, **kwargs):
        super().__init__(**kwargs)
        self.clip_scale = float(clip_scale)
        self.init_epochs = int(init_epochs)

    def prepare(self, teacher, train_ds):
        """Hook run once before training, after the teacher is ready (e.g. to
        estimate a projection from the teacher's features). Default: nothing."""

    def jit_advice(self):
        """A note for runs that XLA-compile the train step (`--jit`) when part of
        this method compiles or runs badly under XLA; empty when nothing does."""
        return ""

    @classmethod
    def search_space(cls, hp):
        """keras-tuner hyperparameters of this method, as constructor kwargs."""
        return {}


def method_options(method_class):
    """The option names a method's constructor takes (its own and DistillationMethod's)."""
    names = set()
    for cls in method_class.__mro__[:method_class.__mro__.index(DistillationMethod) + 1]:
        if "__init__" in vars(cls):
            names.update(name for name, parameter in inspect.signature(cls.__init__).parameters.items()
                         if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD,
                                                                      parameter.VAR_POSITIONAL))
    return names


def build_method(name, **hparams):
    """Instantiate the registered method `name` with `hparams` overriding its defaults;
    an option it does not take is a UserError naming those it does."""
    method_class = METHODS.get(name)
    known = method_options(method_class)
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise UserError(f"--method_options: {name} takes no {', '.join(unknown)}; its options: "
                        f"{', '.join(sorted(known))}")
    return method_class(name=name, **hparams)
