"""The authors' training recipes (docs/method.md section 5): KD_methods_with_TF's, SSKD_SVD's
and their TF2 rewrite's; and RepDistiller's, the benchmark of CRD (Tian et al., ICLR 2020)
and its successors (docs/models.md)."""
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
    """Optimisation hyperparameters of one recipe; flags override any field.

    network_learning_rates: (network name, learning rate) pairs that replace
    `learning_rate` when the recipe trains the network named, as student or as teacher
    (`learning_rate_for`).
    """

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
    network_learning_rates: tuple = ()

    def learning_rate_for(self, network):
        """The initial learning rate of training the network `network` by this recipe."""
        return dict(self.network_learning_rates).get(network, self.learning_rate)


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

# RepDistiller train_student.py (and train_teacher.py): 240 epochs of batch 64, lr 0.05 x0.1
# after epochs 150, 180 and 210 (0.625, 0.75, 0.875 of 240), lr 0.01 for the MobileNetV2 and
# ShuffleNet networks, SGD(momentum=0.9, weight_decay=5e-4): PyTorch's momentum, buf <- 0.9 buf
# + g, w <- w - lr buf, the accumulator of TF1's MomentumOptimizer without Nesterov, g holding
# wd * w (the L2 losses of the models' weight decay). One shuffled pass an epoch, its last
# batch partial (DataLoader(shuffle=True), drop_last False); validation in batches of 64 / 2.
RECIPES.register("crd2020", Recipe(
    learning_rate=0.05, batch_size=64, epochs=240, lr_decay_points=(0.625, 0.75, 0.875),
    lr_decay_rate=0.1, weight_decay=5e-4, eval_batch_size=32, nesterov=False, epoch_cut="pass",
    network_learning_rates=tuple((f"crd:{network}", 0.01)
                                 for network in ("MobileNetV2", "ShuffleV1", "ShuffleV2")),
))


# Knowledge_distillation_via_TF2.0 `train_w_distillation.py` and `op_util.py` (its CO result,
# WRN-40-4 -> WRN-16-4): Keras' SGD(0.1, 0.9, nesterov=True), lr x0.2 (its --decay_rate) from
# the 0-based epochs int(100 p), p in (0.3, 0.6, 0.8), set at each epoch's start; weight_decay
# * v added to the gradient of every trainable variable (the gradient of the L2 losses
# wd * sum(w^2) / 2 that the wrn networks and the methods' layers attach to all of theirs);
# each epoch one pass of batches of 128 whose last is partial (`batch` keeps the remainder:
# epoch cut "pass"); validation in batches of 200. Its shuffle draws from a 12,800-image
# buffer, not the whole set; this port shuffles the whole set.
RECIPES.register("kd_tf2", Recipe(
    learning_rate=0.1, batch_size=128, epochs=100, lr_decay_points=(0.3, 0.6, 0.8),
    lr_decay_rate=0.2, weight_decay=5e-4, optimizer="keras_sgd", epoch_cut="pass",
))


def decay_points(values):
    """--lr_decay_points (strings) as floats, or None."""
    return None if values is None else tuple(float(v) for v in values)
