"""The contract every distillation method fulfils, and the registry that holds them.

A method is a Keras layer so that any auxiliary layers it owns (regressors,
projections, extra classifier heads) are tracked, checkpointed and trained with
the student. The training step calls it with both networks' outputs and adds
the returned terms to the distillation loss.
"""
import keras

from sskd_tf.distill.options import MethodOptions
from sskd_tf.distill.stages import Stage, StagePlan, Update
from sskd_tf.registry import Registry

METHODS = Registry("distillation method")


class DistillationMethod(keras.layers.Layer):
    """Base class of a registered distillation method: one module declares everything
    about a method in its subclass.

    - `Options`: its typed options (a `distill.options.MethodOptions` dataclass); the
      instance holds them as `self.options`, built from the constructor's keywords.
    - `library_name`: the name of its `keras.distillation.DistillationLoss` face in
      `sskd_tf.losses` (generated from this class); `reads`: "features" (feature maps)
      or "logits" (the networks' outputs); `min_taps`: the feature maps it needs.
    - `needs_teacher`: False for methods that learn without a teacher network.
      `pretrained_teacher`: False for a method whose stages train the teacher network
      from its initialisation alongside the student (mutual learning): the run then
      neither trains nor loads one first.
    - `default_gradient_rule`: "sum" adds the distillation gradient to the task gradient;
      "clip" applies the multi-task rule of KD_methods_with_TF `op_util.py`
      (docs/method.md section 5): per student variable the distillation gradient is
      clipped by norm to `clip_scale * ||g_ce|| * sigmoid(epoch)`. The option
      `gradient_rule` overrides it.
    - `task_weight`: weight of the student's task loss in the total loss.
    - `reduction`: "mean" when the terms average over the batch, "sum" when they
      add over it (KD-SVD); tells the distributed step how to split them.
    - `recipe`: the training recipe the method's code comes with (training/recipes.py),
      which a run takes unless one is given; None: the default recipe.
    - `stages()`: the stages of its training (distill/stages.py); one main stage unless
      it says otherwise.
    - `has_exits`: it adds classifiers of its own to the student (`exit_logits`), which
      compare evaluates.
    - `step_inputs`: what its functions read beside the outputs, from
      `distill.stages.STEP_INPUTS` (the epoch within its stage, the examples' indices);
      each is passed as a keyword argument of that name.

    `call(student_out, teacher_out, labels, training)` receives the model output
    dicts `{"logits": ..., "features": [...]}` (`teacher_out` is None when
    `needs_teacher` is False) and returns a dict of named, already weighted
    scalar loss terms. Their sum is the distillation loss.
    """

    Options = MethodOptions
    library_name = None
    reads = "features"
    min_taps = 1
    needs_teacher = True
    pretrained_teacher = True
    default_gradient_rule = "sum"
    reduction = "mean"
    recipe = None
    has_exits = False
    step_inputs = ()

    def __init__(self, name=None, **options):
        super().__init__(name=name)
        self.options = self.Options.of(name or type(self).__name__, **options)

    @property
    def gradient_rule(self):
        return self.options.gradient_rule or self.default_gradient_rule

    @property
    def clip_scale(self):
        return self.options.clip_scale

    @property
    def task_weight(self):
        return 1.0

    def stages(self):
        """The ordered stages of this method's training: by default one, the main stage,
        on the task and the distillation loss by the method's gradient rule."""
        return (Stage(updates=(Update(rule=self.gradient_rule),)),)

    def stage_plan(self):
        """This method's stages as a StagePlan."""
        return StagePlan(tuple(self.stages()))

    def batch_inputs(self):
        """What this method's training batches carry beside the images: its `step_inputs`
        the data gives, and the second view when an update reads it."""
        inputs = [name for name in self.step_inputs if name != "stage_epoch"]
        if self.stage_plan().reads_view(1) and "second_view" not in inputs:
            inputs.append("second_view")
        return tuple(inputs)

    def prepare(self, teacher, train_ds):
        """Hook run once before training, after the teacher is ready and before the method
        is built (e.g. to estimate a projection from the teacher's features, or to read the
        training set's labels by index). `train_ds`: the first epoch's training batches as
        the step gets them, its `batch_inputs()` included. Default: nothing."""

    def jit_advice(self):
        """A note for runs that XLA-compile the train step (`--jit`) when part of
        this method compiles or runs badly under XLA; empty when nothing does."""
        return ""

    @classmethod
    def search_space(cls, hp):
        """keras-tuner hyperparameters of this method, as option values."""
        return {}


def build_method(name, **options):
    """Instantiate the registered method `name` with `options` overriding its defaults;
    an option it does not take is a UserError naming those it does."""
    return METHODS.get(name)(name=name, **options)
