"""sskd_tf: a TensorFlow 2 / Keras port of "Self-supervised Knowledge Distillation
Using Singular Value Decomposition" (Lee, Kim, Song, ECCV 2018)."""
