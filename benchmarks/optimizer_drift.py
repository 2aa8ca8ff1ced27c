"""How far Keras' SGD drifts from TF1's Nesterov momentum (the default) once the learning
rate decays: `python -m benchmarks.optimizer_drift`.

Two tiny digits runs (ResNet8, no distillation, `--seed=0 --deterministic`), identical
but for `--optimizer`; the learning rate decays x0.1 after epochs 1, 2 and 3. Prints,
after each epoch, the relative difference of the two students' weights (the drift),
||w_keras - w_tf1|| / ||w_tf1 - w_0||, beside a control pair that never decays: the two
updates are equal in exact arithmetic at a constant rate, so the control shows how far
float rounding alone carries the two runs apart.
"""
import argparse
import tempfile

import keras
import numpy as np

from sskd_tf.distill.names import BASELINE
from sskd_tf.training import run
from sskd_tf.training.config import RunConfig


class _WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self, student, store):
        super().__init__()
        self.student, self.store = student, store

    def on_epoch_end(self, epoch, logs=None):
        self.store.append(np.concatenate([w.numpy().ravel() for w in self.student.trainable_weights]))


def weights_per_epoch(config):
    """The student's trainable weights at the start and after every epoch of `config`."""
    store = []
    original = run.build_distiller

    def recording(config, method, teacher, student, cut):
        distiller = original(config, method, teacher, student, cut)
        store.append(np.concatenate([w.numpy().ravel() for w in student.trainable_weights]))
        run_callbacks_of.append(_WeightsPerEpoch(student, store))
        return distiller

    run_callbacks_of = []
    standard = run.run_callbacks.standard_callbacks
    run.build_distiller = recording
    run.run_callbacks.standard_callbacks = lambda *a, **k: standard(*a, **k) + run_callbacks_of
    try:
        run.train(config)
    finally:
        run.build_distiller = original
        run.run_callbacks.standard_callbacks = standard
    return store


def drift_per_epoch(args, decay_rate):
    """||w_keras - w_tf1|| / ||w_tf1 - w_0|| after each epoch, for one decay rate."""
    results = {}
    for optimizer in ("tf1_momentum", "keras_sgd"):
        with tempfile.TemporaryDirectory() as train_dir:
            config = RunConfig(
                teacher="resnet8", student="resnet8", method=BASELINE, dataset="digits",
                batch_size=64, take_train=args.take_train, take_test=64, epochs=args.epochs,
                lr_decay_points=(0.25, 0.5, 0.75), lr_decay_rate=decay_rate, optimizer=optimizer,
                seed=0, deterministic=True, train_dir=train_dir, verbose=0)
            results[optimizer] = weights_per_epoch(config)
    start = results["tf1_momentum"][0]
    return [np.linalg.norm(sgd - tf1) / np.linalg.norm(tf1 - start)
            for tf1, sgd in zip(results["tf1_momentum"][1:], results["keras_sgd"][1:])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--take_train", type=int, default=512)
    args = parser.parse_args(argv)
    decayed, control = drift_per_epoch(args, 0.1), drift_per_epoch(args, 1.0)
    print("| after epoch | learning rate of the next epoch | drift, decays x0.1 | drift, no decay (control) |")
    print("|---|---|---|---|")
    for epoch, (with_decay, without) in enumerate(zip(decayed, control)):
        rate = 0.1 * 0.1 ** min(epoch + 1, 3)
        print(f"| {epoch + 1} | {rate:g} | {with_decay:.2e} | {without:.2e} |")


if __name__ == "__main__":
    main()
