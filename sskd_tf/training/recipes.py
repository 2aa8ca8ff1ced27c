"""The authors' two training recipes (docs/method.md section 5)."""
import dataclasses

from sskd_tf.registry import Registry

RECIPES = Registry("recipe")
DEFAULT_RECIPE = "kd_methods"
# The optimizers of training/optimizers.py and the epoch cuts of training/schedule.py,
# named here free of TensorFlow for the flags.
OPTIMIZER_NAMES = ("tf1_momentum", "keras_sgd")
EPOCH_CUTS = ("kd_methods", "eccv2018", "pass")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimisation hyperparameters of one recipe; flags override any field."""

    learning_rate: float
    batch_size: int
    epochs: int
    lr_decay_points: tuple
    lr_decay_rate: float
    weight_decay: float
    eval_batch_size: int = 200
    momentum: float = 0.9
    nesterov: bool = True
    clip_rule: str = "kd_methods"
    optimizer: str = "tf1_momentum"
    epoch_cut: str = "kd_methods"


RECIPES.register("kd_methods", Recipe(
    learning_rate=0.1, batch_size=128, epochs=100, lr_decay_points=(0.3, 0.6, 0.8),
    lr_decay_rate=0.1, weight_decay=5e-4,
))
# SSKD_SVD train.py, newest version. Its clipping differs from KD_methods_with_TF
# (see distiller.clip_threshold_scale): the task gradient is that of the cross-
# entropy plus the regularisation losses, so the weight decay is applied and
# also sets the clipping threshold. Its learning rate is a tf.case of 0.01 before
# epoch 100, 0.001 before epoch 150 and the default 0.0001 after: x0.1 at epochs 100
# and 150, as here. Its epoch is floor(step / int(N / B)) over a stream of full
# batches, for int(E N / B) steps (training/schedule.py).
RECIPES.register("eccv2018", Recipe(
    learning_rate=0.01, batch_size=128, epochs=200, lr_decay_points=(0.5, 0.75),
    lr_decay_rate=0.1, weight_decay=1e-4, clip_rule="eccv2018", epoch_cut="eccv2018",
))


def decay_points(values):
    """--lr_decay_points (strings) as floats, or None."""
    return None if values is None else tuple(float(v) for v in values)
