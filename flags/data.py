"""Dataset flags (--dataset, --data_dir, --no_download)."""
import os

from absl import flags

from sskd_tf.data.names import DATASET_KINDS, DATASET_NAMES, DEFAULT_DATASET, is_dataset_name
from sskd_tf.limits import INT32_MAX

flags.DEFINE_string("dataset", DEFAULT_DATASET,
                    "cifar100 / cifar10: from --data_dir, else from a prepared TFDS copy or the "
                    "Keras cache, else downloaded and prepared once by TFDS (see --no_download); digits: 8x8 handwritten digits bundled "
                    "with the repo, for offline runs; tfds:<name>: a TFDS image classification "
                    "dataset (its TFDS data dir: --data_dir); folder:<dir>: one subfolder of "
                    "images per class (train/ and test/ subfolders, else --validation_split).")
flags.register_validator(
    "dataset", is_dataset_name,
    message=f"choose one of: {', '.join(DATASET_NAMES)}, "
            f"or {', '.join(kind + ':<...>' for kind in DATASET_KINDS)}")
flags.DEFINE_integer("image_size", None,
                     "Resize the images to this size x this size (default: the dataset's own; "
                     "required for TFDS datasets of varying image sizes).", lower_bound=1,
                     upper_bound=INT32_MAX)
flags.DEFINE_float("validation_split", 0.2,
                   "Fraction of a folder: or tfds: dataset held out for validation when it "
                   "has no test split (a number strictly between 0 and 1).")
flags.register_validator("validation_split", lambda fraction: 0.0 < fraction < 1.0,
                         message="the fraction held out must lie strictly between 0 and 1")
flags.DEFINE_string("data_dir", None,
                    "Where the CIFAR data is: a TFDS data dir holding the prepared dataset, the "
                    "python archive (cifar-100-python.tar.gz, cifar-10-python.tar.gz), its "
                    "extracted folder, or a directory holding either; it must exist.")
flags.register_validator("data_dir", lambda path: path is None or os.path.exists(path),
                         message="no such file or directory")
flags.DEFINE_bool("no_download", False,
                  "Never fetch CIFAR: without --data_dir, read only a prepared TFDS copy or the "
                  "Keras cache (an explicit --data_dir is never downloaded into).")
flags.DEFINE_integer("take_train", None,
                     "Keep only the first N training examples (quick checks, tests).",
                     lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_integer("take_test", None, "Keep only the first N test examples.", lower_bound=1,
                     upper_bound=INT32_MAX)
