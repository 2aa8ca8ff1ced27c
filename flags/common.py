"""Flags every mode shares: what to run and where to write."""
from absl import flags

MODES = ("train", "teacher", "summary", "compare", "tune", "export")

flags.DEFINE_enum("mode", "train", MODES,
                  "train: distil a student (training the teacher first if needed); "
                  "teacher: train the teacher alone; summary: print both models; "
                  "compare: train several methods with the same teacher; tune: search loss weights; "
                  "export: convert the student of a finished --train_dir to LiteRT.")
flags.DEFINE_string("train_dir", "runs/default", "Directory for checkpoints, logs and results.")
# The largest count or size a flag takes: TensorFlow holds sizes (of an image, say) as
# 32-bit integers, and a larger batch, epoch count or image could not be held anyway.
INT32_MAX = 2**31 - 1
# The seeds numpy's global generator takes (keras.utils.set_random_seed seeds it).
SEED_MAX = 2**32 - 1

flags.DEFINE_integer("seed", 0, "Random seed for weights, data order and augmentation.",
                     lower_bound=0, upper_bound=SEED_MAX)
