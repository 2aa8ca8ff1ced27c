"""Training flags: recipe, optimisation, run directory, scale. Numbers left
unset take the recipe's value (docs/method.md section 5)."""
from absl import flags

from sskd_tf.limits import INT32_MAX
from sskd_tf.training.precision import FULL_PRECISION, PRECISIONS
from sskd_tf.training.recipes import EPOCH_CUTS, OPTIMIZER_NAMES, RECIPES, decay_points

STRATEGIES = ("default", "mirrored", "multi_worker")

flags.DEFINE_enum("recipe", None, RECIPES.names(),
                  "kd_methods: KD_methods_with_TF (lr 0.1, 100 epochs, wd 5e-4); "
                  "eccv2018: SSKD_SVD (lr 0.01, 200 epochs, wd 1e-4, rotation augmentation); "
                  "crd2020: RepDistiller, the CRD benchmark (lr 0.05, 0.01 for crd:MobileNetV2 "
                  "and the crd:ShuffleV1/V2; 240 epochs of batch 64, wd 5e-4, momentum without "
                  "Nesterov); kd_tf2: Knowledge_distillation_via_TF2.0 (lr 0.1 x0.2 at 30/60/80 of "
                  "100 epochs, wd 5e-4 on every variable, Keras' SGD, one pass an epoch). "
                  "Default: the method's own (eccv2018 for svd_eccv, kd_tf2 for co), else "
                  "kd_methods.")
flags.DEFINE_enum("epoch_cut", None, EPOCH_CUTS,
                  "How steps make epochs (recipe: its own). kd_methods: full batches across "
                  "passes, epoch floor(step*B/N), int(E*N/B)+1 steps; eccv2018: full batches, "
                  "int(N/B) steps an epoch, int(E*N/B) steps; pass: one pass an epoch, its "
                  "last batch partial (ceil(N/B) steps).")
flags.DEFINE_integer("epochs", None, "Training epochs (recipe: 100 / 200 / 240).",
                     lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_integer("batch_size", None, "Global training batch (recipe: 128 / 128 / 64).",
                     lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_float("learning_rate", None,
                   "Initial learning rate, a positive number (recipe: 0.1 / 0.01 / 0.05).")
flags.DEFINE_list("lr_decay_points", None,
                  "Fractions of the epochs at which the learning rate decays, each strictly "
                  "between 0 and 1, increasing (recipe: 0.3,0.6,0.8).")
flags.DEFINE_float("lr_decay_rate", None, "Learning-rate factor at each decay point (recipe: 0.1; kd_tf2: 0.2).",
                   lower_bound=0.0)
flags.DEFINE_float("weight_decay", None, "L2 weight decay (recipe: 5e-4 / 1e-4 / 5e-4).",
                   lower_bound=0.0)
flags.DEFINE_enum("optimizer", None, OPTIMIZER_NAMES,
                  "tf1_momentum (recipe; kd_tf2: keras_sgd): TF1's MomentumOptimizer with Nesterov, whose momentum "
                  "accumulates gradients; keras_sgd: Keras' SGD, whose velocity carries the old "
                  "learning rate for ~10 steps after each decay.")
flags.DEFINE_string("teacher_weights", None,
                    "Teacher weights (.keras, .weights.h5 or the authors' .mat); "
                    "without it the teacher is trained first in train_dir/teacher/.")
flags.DEFINE_enum("strategy", "default", STRATEGIES,
                  "default: one device; mirrored: all GPUs (2 logical CPUs without GPU); "
                  "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.")
flags.DEFINE_bool("sync_batch_norm", False,
                  "With several replicas, batch norm over the global batch (mean, variance and "
                  "slim's n/(n-1) of all replicas): the run then equals one device with the same "
                  "--batch_size. Default: each replica normalises its own share, as the authors' "
                  "single GPU did a batch of that size. No effect on one device.")
flags.DEFINE_bool("jit", False, "XLA-compile the train step (jit_compile). Which methods "
                  "compile, and whether it pays on CPU: docs/benchmarks.md.")
flags.DEFINE_enum("mixed_precision", FULL_PRECISION, PRECISIONS,
                  "Keras dtype policy of the student and the teacher (float32 variables); "
                  "losses and decompositions stay float32; mixed_float16 adds dynamic loss "
                  "scaling, removed before the clip rule.")
flags.DEFINE_bool("deterministic", False,
                  "TensorFlow op determinism: with --seed, two runs give identical weights.")
flags.DEFINE_integer("max_consecutive_skips", 20,
                     "Steps with a non-finite loss or gradient are skipped; stop the run after "
                     "this many in a row.", lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_bool("overwrite", False, "Replace a finished run in --train_dir.")


def _valid_decay_points(values):
    if values is None:
        return True
    try:
        points = decay_points(values)
    except ValueError:
        raise flags.ValidationError(f"not numbers: {','.join(values)}") from None
    if not all(0.0 < p < 1.0 for p in points):
        raise flags.ValidationError(f"every point must lie in (0, 1), got {','.join(values)}")
    if list(points) != sorted(set(points)):
        raise flags.ValidationError(f"points must be strictly increasing, got {','.join(values)}")
    return True


flags.register_validator("lr_decay_points", _valid_decay_points)
flags.register_validator("learning_rate", lambda v: v is None or v > 0,
                         message="the learning rate must be positive")
