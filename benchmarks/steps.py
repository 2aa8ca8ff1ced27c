"""Part 1: wall time of one training step of resnet32 -> resnet8, through the real
`Distiller` train function that `fit` calls (KD_methods_with_TF recipe: SGD with
Nesterov momentum, weight decay 5e-4 on the student, the clipped multi-task update).

Rows: (a) the student alone (the baseline method); (b) (a) plus the teacher's forward
pass; (c) every registered method, those with a decomposition `backend` option once per
backend, and the default method (KD-SVD) with the summed instead of the clipped update
(`gradient_rule=sum`), whose difference from the clipped row is the cost of the clip
rule's second backward pass.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from sskd_tf import models
from sskd_tf.distill import METHODS, DistillationMethod, build_method
from sskd_tf.distill.catalog import catalog
from sskd_tf.distill.names import BASELINE, DEFAULT_METHOD
from sskd_tf.linalg import BACKENDS
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import build_distiller
from sskd_tf.training.schedule import EpochCut

STUDENT_ONLY = "(a) student"
WITH_TEACHER = "(b) student + teacher forward"
SUM_RULE = f"{DEFAULT_METHOD}, sum rule"
TEACHER_FORWARD = "teacher_forward"
CIFAR_TRAIN_IMAGES = 50_000


class TeacherForward(DistillationMethod):
    """Row (b): the teacher runs but teaches nothing. Its one term is a stop-gradient
    of the teacher's logits, so the graph keeps the teacher's forward pass while the
    backward pass stays the student-only one."""

    def call(self, student_out, teacher_out, labels, training=False):
        del student_out, labels, training
        return {self.name: tf.stop_gradient(tf.reduce_mean(teacher_out["logits"]))}


@dataclasses.dataclass(frozen=True)
class StepCase:
    """One row: a method (registered name, or one of the probes above) and its options."""

    label: str
    method: str
    options: tuple = ()
    jit: bool = False


# The faithful backend with its decompositions requested on the host CPU (the authors'
# placement; on a CPU-only machine the step is there already, so it prices the request).
PINNED = f"{DEFAULT_METHOD} [linalg_svd], decomposition_device=cpu"


def _backends_of(method):
    """The decomposition backends a method takes (the choices of its `backend` option)."""
    return next((option.choices for option in catalog().options_of(method)
                 if option.name == "backend"), ())


def default_cases(backends=BACKENDS, jit_cases=True):
    """Rows (a), (b), every registered method (those with a backend option once per
    backend), the sum-rule diagnostic (its difference from the clipped step does not
    depend on the backend: timed with "gram") and the XLA rows when `jit_cases`."""
    cases = [StepCase(STUDENT_ONLY, BASELINE), StepCase(WITH_TEACHER, TEACHER_FORWARD)]
    for name in METHODS.names():
        if name == BASELINE:
            continue
        if _backends_of(name):
            cases += [StepCase(f"{name} [{b}]", name, (("backend", b),))
                      for b in backends if b in _backends_of(name)]
        else:
            cases.append(StepCase(name, name))
    cases += [StepCase(f"{SUM_RULE} [{b}]", DEFAULT_METHOD,
                       (("backend", b), ("gradient_rule", "sum")))
              for b in backends if b == "gram"]
    if "linalg_svd" in backends:
        cases.append(StepCase(PINNED, DEFAULT_METHOD, (("decomposition_device", "cpu"),)))
    if jit_cases:
        cases += [StepCase(f"{STUDENT_ONLY}, jit", BASELINE, jit=True),
                  StepCase(f"{WITH_TEACHER}, jit", TEACHER_FORWARD, jit=True),
                  StepCase(f"{DEFAULT_METHOD} [gram], jit", DEFAULT_METHOD, (("backend", "gram"),),
                           jit=True)]
        if "batched" in backends:
            cases.append(StepCase(f"{DEFAULT_METHOD} [batched], jit", DEFAULT_METHOD,
                                  (("backend", "batched"),), jit=True))
    return cases


def is_sum_rule(case):
    """Whether `case` is the sum-rule diagnostic row."""
    return dict(case.options).get("gradient_rule") == "sum"


def make_method(case):
    if case.method == TEACHER_FORWARD:
        return TeacherForward(name=TEACHER_FORWARD)
    return build_method(case.method, **dict(case.options))


def synthetic_batch(batch_size, num_classes, seed=0):
    """Normalised-looking images [B, 32, 32, 3] and labels [B]."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32)
    return tf.constant(images), tf.constant(rng.integers(0, num_classes, batch_size))


def build_step(case, teacher, batch, student_name="resnet8", num_classes=100):
    """A no-argument callable running one real train step on `batch` and waiting for it."""
    config = RunConfig(teacher=teacher.name, student=student_name, method=case.method,
                       jit=case.jit, verbose=0).resolved()
    method = make_method(case)
    student = models.build_model(student_name, num_classes, weight_decay=config.weight_decay)
    method.prepare(teacher, tf.data.Dataset.from_tensors(batch))
    cut = EpochCut(config.epoch_cut, CIFAR_TRAIN_IMAGES, int(batch[0].shape[0]))
    distiller = build_distiller(config, method, teacher if method.needs_teacher else None,
                                student, cut)
    distiller.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

    def step():
        logs = distiller.train_function(iterator)
        return {name: float(value) for name, value in logs.items()}

    return step
