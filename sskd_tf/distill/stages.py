"""Training stages: the parts of a run in which a method trains different variables on
different losses, in order (KD_methods_with_TF `train_w_distill.py`: FitNet and FSP train
40 epochs on the distillation loss alone before the task; FT, AB and MHGD train a helper
network first).

A method declares its stages (`DistillationMethod.stages()`), the main one last; the
distiller traces one train step per stage and switches at epoch boundaries (the stage of
a step follows from the step count, so a resumed run picks up in its stage); the run, the
schedule, the tuner and compare read the plan (`StagePlan`) rather than a method's
attributes. Where the authors count epochs, a plan says how: the stages before the
main one run on top of the run's `--epochs`, the learning rate decays inside the main
stage only (its first decay at epoch `offset + int(E p)`), and the clip rule's sigmoid
counts the epochs of its own stage (MHGD's `sigmoid(epoch - init_epoch)`).
"""
import dataclasses

from sskd_tf.distill.options import GRADIENT_RULES

PARTS = ("student", "method", "teacher")
MAIN = "main"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run.

    name: "main" for the stage that lasts the run's `--epochs`; any other name for a stage
    of `epochs` epochs of its own. trains: the parts whose trainable variables the stage
    updates (each only where the stage's loss reaches it, as TF1's optimizers skip a
    variable without a gradient). task: the student's task loss is part of the loss
    (its weight decay too); False: weight decay only on the variables the distillation
    loss reaches (`Optimizer_w_Initializer`). distillation: the method's function giving
    the stage's distillation terms, "call" (the method's loss), the name of another of
    its methods, or None (no distillation term). rule: how the distillation gradient
    joins the task gradient ("sum" or "clip"; a stage without the task sums).
    reads_student: the stage runs the student's forward pass (training mode).
    """

    name: str = MAIN
    epochs: int = None
    trains: tuple = ("student", "method")
    task: bool = True
    distillation: str = "call"
    rule: str = "sum"
    reads_student: bool = True

    def __post_init__(self):
        if (self.name == MAIN) != (self.epochs is None):
            raise ValueError("the main stage lasts the run's epochs; every other stage "
                             f"needs its own (stage {self.name!r}, epochs {self.epochs})")
        unknown = set(self.trains) - set(PARTS)
        if unknown or not self.trains:
            raise ValueError(f"stage {self.name!r} trains {self.trains}; parts: {PARTS}")
        if self.rule not in GRADIENT_RULES:
            raise ValueError(f"stage {self.name!r}: rule {self.rule!r}; one of {GRADIENT_RULES}")
        if not self.task and self.distillation is None:
            raise ValueError(f"stage {self.name!r} has no loss")
        if self.task and not self.reads_student:
            raise ValueError(f"stage {self.name!r}: the task loss needs the student's forward pass")


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A method's stages in order, the main one last (it lasts the run's `--epochs`)."""

    stages: tuple

    def __post_init__(self):
        names = [stage.name for stage in self.stages]
        if not names or names[-1] != MAIN or names.count(MAIN) != 1 or len(set(names)) != len(
                names):
            raise ValueError(f"stages {names}: names unique, the main stage last")

    @property
    def offset(self):
        """Epochs before the main stage: the run's epochs on top of `--epochs`, and where
        the learning-rate schedule starts to count."""
        return sum(stage.epochs for stage in self.stages[:-1])

    def total_epochs(self, epochs):
        """Epochs of a run whose main stage lasts `epochs`."""
        return self.offset + epochs

    def first_epoch(self, stage):
        """The run's epoch at which `stage` starts."""
        index = self.stages.index(stage)
        return sum(other.epochs for other in self.stages[:index])

    def at(self, epoch):
        """(index, stage) of the stage that the run's `epoch` falls in."""
        first = 0
        for index, stage in enumerate(self.stages[:-1]):
            first += stage.epochs
            if epoch < first:
                return index, stage
        return len(self.stages) - 1, self.stages[-1]

    def trains(self, part):
        """Whether some stage trains `part` ("student", "method" or "teacher")."""
        return any(part in stage.trains for stage in self.stages)
