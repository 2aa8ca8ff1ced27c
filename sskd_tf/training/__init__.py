"""Training: the distiller (a keras.Model with its own train step), the recipes,
the learning-rate schedule, callbacks, a run's configuration and teacher, and the run
that ties them together."""
