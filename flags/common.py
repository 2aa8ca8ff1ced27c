"""Flags every mode shares: what to run and where to write."""
from absl import flags

from sskd_tf.limits import SEED_MAX

MODES = ("train", "teacher", "summary", "compare", "tune", "export")

flags.DEFINE_enum("mode", "train", MODES,
                  "train: distil a student (training the teacher first if needed); "
                  "teacher: train the teacher alone; summary: print both models; "
                  "compare: train several methods with the same teacher; tune: search loss weights; "
                  "export: convert the student of a finished --train_dir to LiteRT.")
flags.DEFINE_string("train_dir", None,
                    "Directory of the run: checkpoints, logs and results. Default: "
                    "runs/<method or mode>-<student>-<dataset>-<8 hex digits of the settings' "
                    "fingerprint>, so the same command resumes its run and another gets its own.")
flags.DEFINE_integer("seed", 0, "Random seed for weights, data order and augmentation.",
                     lower_bound=0, upper_bound=SEED_MAX)
