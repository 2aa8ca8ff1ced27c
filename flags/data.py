"""Dataset flags (--dataset, --data_dir, --no_download)."""
import os

from absl import flags

from sskd_tf.data.names import DATASET_NAMES, DEFAULT_DATASET

flags.DEFINE_enum("dataset", DEFAULT_DATASET, DATASET_NAMES,
                  "cifar100 / cifar10: from --data_dir, else from a prepared TFDS copy or the "
                  "Keras cache, else downloaded and prepared once by TFDS (see --no_download); "
                  "digits: 8x8 handwritten digits bundled with the repo, for offline runs.")
flags.DEFINE_string("data_dir", None,
                    "Where the CIFAR data is: a TFDS data dir holding the prepared dataset, the "
                    "python archive (cifar-100-python.tar.gz, cifar-10-python.tar.gz), its "
                    "extracted folder, or a directory holding either.")
flags.register_validator("data_dir", lambda path: path is None or os.path.exists(path),
                         message="no such file or directory")
flags.DEFINE_bool("no_download", False,
                  "Never fetch CIFAR: without --data_dir, read only a prepared TFDS copy or the "
                  "Keras cache (an explicit --data_dir is never downloaded into).")
flags.DEFINE_integer("take_train", None,
                     "Keep only the first N training examples (quick checks, tests).", lower_bound=1)
flags.DEFINE_integer("take_test", None, "Keep only the first N test examples.", lower_bound=1)
