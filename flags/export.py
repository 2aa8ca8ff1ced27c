"""LiteRT export flags: --mode=export, or --export after a training run."""
from absl import flags

from sskd_tf.limits import INT32_MAX

flags.DEFINE_bool("export", False, "After training, export the student to LiteRT float32, float16 "
                  "and int8 and measure them, as --mode=export does (train and teacher modes).")
flags.DEFINE_integer("representative_samples", 200,
                     "Training images (of the run's own training split) that calibrate the int8 "
                     "model's activation ranges.", lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_integer("latency_runs", 100, "Batch-1 runs whose median is the reported latency.",
                     lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_float("int8_max_accuracy_drop", 1.0,
                   "Percentage points of top-1 accuracy the int8 model may lose against float32 "
                   "before the export report warns.", lower_bound=0.0)
flags.DEFINE_integer("export_threads", 1, "CPU threads of the LiteRT interpreter when measuring.",
                     lower_bound=1, upper_bound=INT32_MAX)
