"""Flags of `--mode=tune`: the keras-tuner search over the method's options
(docs/tuning.md). The method, models, dataset and recipe flags apply as in training."""
from absl import flags

from sskd_tf.limits import INT32_MAX

TUNERS = ("random", "bayesian", "hyperband")

flags.DEFINE_enum("tuner", "random", TUNERS,
                  "random: random search; bayesian: Gaussian-process Bayesian optimisation; "
                  "hyperband: successive halving over up to --tune_epochs epochs.")
flags.DEFINE_integer("max_trials", 10, "Trials of the search in all, counting those of a resumed "
                     "search (caps hyperband's too).", lower_bound=1, upper_bound=INT32_MAX)
flags.DEFINE_integer("tune_epochs", 2, "Epochs each trial trains: the first ones of the full run "
                     "(--epochs), on its learning-rate schedule; hyperband: the most a trial "
                     "trains.", lower_bound=1, upper_bound=INT32_MAX)
