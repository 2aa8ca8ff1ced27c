"""The configuration of one training run (RunConfig) and how its unset fields are
resolved: the recipe (the method's own, e.g. eccv2018 for svd_eccv, else kd_methods), then
the dataset's run defaults, then the recipe's values (its learning rate for the student)."""
import dataclasses

from sskd_tf import data as datasets
from sskd_tf import models
from sskd_tf.distill.names import DEFAULT_METHOD
from sskd_tf.training.precision import FULL_PRECISION
from sskd_tf.training.recipes import DEFAULT_RECIPE, RECIPES

RESULTS_FILE = "results.json"


@dataclasses.dataclass
class RunConfig:
    """Everything a run needs; None fields take the dataset's run_defaults, then
    the recipe's values. download: a missing dataset may be fetched (main.py's default;
    False here). recipe None: the method's own recipe (`DistillationMethod.recipe`), else
    kd_methods. train_dir None: derived from the run's identity (training/identity.py)."""

    teacher: str = "resnet32"
    student: str = None
    teacher_taps: tuple = ()
    student_taps: tuple = ()
    method: str = DEFAULT_METHOD
    method_options: dict = dataclasses.field(default_factory=dict)
    dataset: str = datasets.DEFAULT_DATASET
    data_dir: str = None
    image_size: int = None
    validation_split: float = 0.2
    download: bool = False
    recipe: str = None
    epoch_cut: str = None
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    lr_decay_points: tuple = None
    lr_decay_rate: float = None
    weight_decay: float = None
    optimizer: str = None
    keras_batch_norm: bool = False
    train_dir: str = None
    teacher_weights: str = None
    seed: int = 0
    strategy: str = "default"
    sync_batch_norm: bool = False
    jit: bool = False
    mixed_precision: str = FULL_PRECISION
    deterministic: bool = False
    max_consecutive_skips: int = 20
    overwrite: bool = False
    take_train: int = None
    take_test: int = None
    verbose: int = 1

    def resolved(self):
        """A copy with the recipe chosen and its values filled in, and the student chosen."""
        from sskd_tf.distill import METHODS

        recipe_name = self.recipe or METHODS.get(self.method).recipe or DEFAULT_RECIPE
        recipe = RECIPES.get(recipe_name)
        student = self.student or models.student_for(self.teacher)
        defaults = {**dataclasses.asdict(recipe),
                    "learning_rate": recipe.learning_rate_for(student),
                    **datasets.get_dataset_info(self.dataset).run_defaults}
        filled = {name: value for name, value in defaults.items()
                  if hasattr(self, name) and getattr(self, name) is None}
        return dataclasses.replace(self, student=student, recipe=recipe_name, **filled)


def log(config, message):
    """Print `message` unless the run is quiet (config.verbose == 0)."""
    if config.verbose:
        print(message, flush=True)
