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


VIEWS = 2
# What a method may read at each step beside the networks' outputs (`step_inputs`): the
# epoch within its stage, each example's index in the training set, the batch augmented a
# second time (for an update on a view of its own).
STEP_INPUTS = ("stage_epoch", "sample_indices", "second_view")


@dataclasses.dataclass(frozen=True)
class Update:
    """One update of the variables in a step.

    trains: the parts whose trainable variables it updates (each only where its loss
    reaches it, as TF1's optimizers skip a variable without a gradient); the batch-norm
    statistics of a network change only in updates that train it (TF1 runs only the
    update ops of the trained network). task: the student's task loss is part of the loss
    (its weight decay too); False: weight decay only on the variables the distillation loss
    reaches (`Optimizer_w_Initializer`). distillation: the method's function giving the
    distillation terms, "call" (the method's loss), the name of another of its methods, or
    None (no distillation term). rule: how the distillation gradient joins the task
    gradient ("sum" or "clip"; an update without the task sums). reads_student: the update
    runs the student's forward pass (training mode). teacher_training: the mode of the
    teacher's forward pass (None: training mode when the update trains it). view: 0, the
    batch; 1, the batch augmented a second time (`second_view`). counts_step: the update
    advances the optimizer's step count (the first of a step does; TF1's later train ops of
    a step did not, DML's peer's among them).
    """

    trains: tuple = ("student", "method")
    task: bool = True
    distillation: str = "call"
    rule: str = "sum"
    reads_student: bool = True
    teacher_training: bool = None
    view: int = 0
    counts_step: bool = True

    def __post_init__(self):
        unknown = set(self.trains) - set(PARTS)
        if unknown or not self.trains:
            raise ValueError(f"an update trains {self.trains}; parts: {PARTS}")
        if self.rule not in GRADIENT_RULES:
            raise ValueError(f"update rule {self.rule!r}; one of {GRADIENT_RULES}")
        if not self.task and self.distillation is None:
            raise ValueError("an update without the task needs a distillation loss")
        if self.task and not self.reads_student:
            raise ValueError("the task loss needs the student's forward pass")
        if self.view not in range(VIEWS):
            raise ValueError(f"view {self.view}: 0 or 1")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: "main" for the stage that lasts the run's `--epochs`, any other
    name for a stage of `epochs` epochs of its own; each step of it runs `updates` in order
    (one, by default: the task and the method's loss, summed)."""

    name: str = MAIN
    epochs: int = None
    updates: tuple = (Update(),)

    def __post_init__(self):
        if (self.name == MAIN) != (self.epochs is None):
            raise ValueError("the main stage lasts the run's epochs; every other stage "
                             f"needs its own (stage {self.name!r}, epochs {self.epochs})")
        if not self.updates or not self.updates[0].counts_step or any(
                update.counts_step for update in self.updates[1:]):
            raise ValueError(f"stage {self.name!r}: its first update, and only it, counts the step")

    @property
    def trains(self):
        """The parts some update of the stage trains."""
        return tuple(part for part in PARTS if any(part in u.trains for u in self.updates))


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

    def reads_view(self, view):
        """Whether some update reads the batch's `view`."""
        return any(u.view == view for stage in self.stages for u in stage.updates)
