"""How a run's steps are cut into epochs, and the learning rate over them.

The epoch of a step drives the learning-rate decays, the clip rule's sigmoid and the
training stages; its last step is where the run validates and checkpoints. The
authors' two training scripts cut differently, and `EpochCut` reproduces each
(docs/method.md section 5, "Epochs"):

- "kd_methods" (KD_methods_with_TF `train_w_distill.py`): training draws full batches of B
  from one endless stream of shuffled passes (the images left at the end of a pass open the
  next one); the epoch of step i (0-based) is floor(i B / N), so epochs last 390 or 391
  steps on CIFAR (N = 50,000, B = 128), and the run lasts int(E N / B) + 1 steps
  (39,063 for E = 100).
- "eccv2018" (SSKD_SVD `train.py`): the same stream of full batches; the epoch of step i is
  floor(i / int(N / B)) (390 steps an epoch on CIFAR) and the run lasts int(E N / B) steps
  (78,125 for E = 200: 125 steps past the 200th epoch of 390).
- "pass": one pass over the training set an epoch, ceil(N / B) steps whose last batch is
  partial (E ceil(N / B) steps): the cut of this port's earlier versions, and of the
  library when it is given a number of steps an epoch.

Where the authors' run goes on past its last whole epoch (a step count not a multiple of
the epoch), those steps are trained in the last epoch: their learning rate and sigmoid are
the ones the formulas give them, so the update is the authors'; only the last validation
comes after them.
"""
import dataclasses
import math

import keras
import tensorflow as tf

from sskd_tf.training.recipes import EPOCH_CUTS


@dataclasses.dataclass(frozen=True)
class EpochCut:
    """The epochs of `kind` (one of EPOCH_CUTS) over `num_train` examples in batches of
    `batch_size`."""

    kind: str
    num_train: int
    batch_size: int

    def __post_init__(self):
        if self.kind not in EPOCH_CUTS:
            raise ValueError(f"unknown epoch cut {self.kind!r}; choose one of: "
                             f"{', '.join(EPOCH_CUTS)}")

    @classmethod
    def of_steps(cls, steps_per_epoch):
        """Epochs of `steps_per_epoch` steps each (the library's `steps_in_epoch`)."""
        return cls("pass", int(steps_per_epoch), 1)

    @property
    def full_batches(self):
        """Whether training draws full batches from one stream across passes (both of the
        authors' cuts) rather than one pass per epoch with a partial last batch."""
        return self.kind != "pass"

    @property
    def _steps_per_epoch(self):
        """The fixed length of an epoch of the "eccv2018" and "pass" cuts."""
        if self.kind == "eccv2018":
            return max(1, self.num_train // self.batch_size)
        return math.ceil(self.num_train / self.batch_size)

    def epoch_of(self, step):
        """The 0-based epoch of a 0-based global step, as a float32 tensor."""
        step = tf.cast(step, tf.int64)
        if self.kind == "kd_methods":
            epoch = tf.math.floordiv(step * self.batch_size, self.num_train)
        else:
            epoch = tf.math.floordiv(step, self._steps_per_epoch)
        return tf.cast(epoch, tf.float32)

    def epoch_at(self, step):
        """The 0-based epoch of a 0-based global step, as a Python int (`epoch_of`)."""
        if self.kind == "kd_methods":
            return step * self.batch_size // self.num_train
        return step // self._steps_per_epoch

    def first_step(self, epoch):
        """The first global step whose epoch is `epoch`."""
        if self.kind == "kd_methods":
            return -(-epoch * self.num_train // self.batch_size)
        return epoch * self._steps_per_epoch

    def total_steps(self, epochs):
        """The steps of a run of `epochs` epochs."""
        if self.kind == "kd_methods":
            return epochs * self.num_train // self.batch_size + 1
        if self.kind == "eccv2018":
            return max(epochs * self.num_train // self.batch_size, epochs)
        return epochs * self._steps_per_epoch

    def last_step(self, epoch, epochs):
        """One past the last step of `epoch` in a run of `epochs` epochs: the next
        epoch's first step, or the run's end for its last epoch."""
        return self.total_steps(epochs) if epoch + 1 >= epochs else self.first_step(epoch + 1)

    def steps_in(self, epoch, epochs):
        """The steps of `epoch` in a run of `epochs` epochs."""
        return self.last_step(epoch, epochs) - self.first_step(epoch)


def clip_sigmoid(epoch):
    """sigmoid(epoch), taken as exactly 1 once above 1 - 1e-8 (op_util.py `sigmoid`)."""
    value = tf.sigmoid(tf.cast(epoch, tf.float32))
    return tf.where(value > 1.0 - 1e-8, tf.ones_like(value), value)


def decay_epochs(epochs, decay_points, offset=0):
    """Epochs at which the learning rate decays: offset + int(epochs * p), `offset` the
    epochs of the stages before the main one (`StagePlan.offset`)."""
    return [offset + int(epochs * point) for point in decay_points]


def learning_rate_schedule(learning_rate, decay_points, decay_rate, epochs, cut, offset=0):
    """Piecewise-constant learning rate: x decay_rate from the first step of each decay
    epoch on, the epochs of `cut` (an EpochCut), counted from `offset`."""
    boundaries = [cut.first_step(e) - 1 for e in decay_epochs(epochs, decay_points, offset)]
    values = [learning_rate * decay_rate ** i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
