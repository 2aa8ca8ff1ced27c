"""TF1's Nesterov momentum as a Keras optimizer, checked against a numpy transcription
of TF1's ApplyMomentum kernel over steps that cross two learning-rate changes."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.training.optimizers import OPTIMIZERS, TF1Momentum, build_optimizer
from sskd_tf.training.recipes import OPTIMIZER_NAMES, RECIPES
from sskd_tf.training.schedule import EpochCut, learning_rate_schedule

from main_cli import REPO

MOMENTUM = 0.9
STEPS = 8


def _schedule():
    # 4 epochs of 2 steps, decays at epochs int(4 * 0.25) = 1 and int(4 * 0.75) = 3:
    # rate 0.1 for steps 0-1, 0.01 for steps 2-5, 0.001 for steps 6-7.
    return learning_rate_schedule(0.1, (0.25, 0.75), 0.1, epochs=4, cut=EpochCut.of_steps(2))


def _gradients():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(STEPS)]


def _initial():
    return np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)


def tf1_momentum_numpy(weights, gradients, rates, momentum=MOMENTUM):
    """TF1 ApplyMomentum, use_nesterov=True, in float32: accum = accum * m + g;
    var -= g * lr + accum * m * lr. Returns the weights after each step."""
    weights = weights.copy()
    accumulator = np.zeros_like(weights)
    m = np.float32(momentum)
    history = []
    for gradient, rate in zip(gradients, rates):
        lr = np.float32(rate)
        accumulator = accumulator * m + gradient
        weights = weights - (gradient * lr + accumulator * m * lr)
        history.append(weights)
    return history


def _rates():
    schedule = _schedule()
    return [float(schedule(step)) for step in range(STEPS)]


def test_the_schedule_of_these_tests_changes_twice():
    np.testing.assert_allclose(_rates(), [0.1] * 2 + [0.01] * 4 + [0.001] * 2, rtol=1e-6)


def _run(optimizer, variable, gradients):
    history = []
    for gradient in gradients:
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
        history.append(variable.numpy().copy())
    return history


def test_tf1_momentum_equals_the_numpy_transcription_across_two_decays():
    variable = keras.Variable(_initial())
    history = _run(TF1Momentum(_schedule(), momentum=MOMENTUM), variable, _gradients())
    expected = tf1_momentum_numpy(_initial(), _gradients(), _rates())
    for step, (got, want) in enumerate(zip(history, expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"step {step}")


def test_keras_sgd_is_another_update_after_a_decay():
    """The alternative of --optimizer=keras_sgd: equal before the first decay, not after."""
    variable = keras.Variable(_initial())
    history = _run(build_optimizer("keras_sgd", _schedule(), MOMENTUM, True), variable, _gradients())
    expected = tf1_momentum_numpy(_initial(), _gradients(), _rates())
    np.testing.assert_allclose(history[1], expected[1], rtol=1e-5, atol=1e-6)
    assert np.abs(history[4] - expected[4]).max() > 1e-3


def test_the_accumulator_is_checkpointed_and_a_restored_run_continues_identically(tmp_path):
    gradients = _gradients()
    variable = keras.Variable(_initial())
    optimizer = TF1Momentum(_schedule())
    _run(optimizer, variable, gradients[:3])
    path = tf.train.Checkpoint(optimizer=optimizer, variable=variable).save(str(tmp_path / "ckpt"))
    uninterrupted = _run(optimizer, variable, gradients[3:])[-1]

    restored_variable = keras.Variable(np.zeros((3, 2), np.float32))
    restored = TF1Momentum(_schedule())
    restored.build([restored_variable])
    tf.train.Checkpoint(optimizer=restored, variable=restored_variable).restore(path).assert_consumed()
    assert int(restored.iterations.numpy()) == 3
    resumed = _run(restored, restored_variable, gradients[3:])[-1]
    np.testing.assert_array_equal(resumed, uninterrupted)


def test_tf1_momentum_compiles_with_xla():
    variable = keras.Variable(_initial())
    optimizer = TF1Momentum(_schedule())
    optimizer.build([variable])

    @tf.function(jit_compile=True)
    def step(gradient):
        optimizer.apply_gradients([(gradient, variable)])

    for gradient in _gradients():
        step(tf.constant(gradient))
    expected = tf1_momentum_numpy(_initial(), _gradients(), _rates())[-1]
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_the_optimizer_names_and_the_recipes_default():
    assert OPTIMIZERS.names() == sorted(OPTIMIZER_NAMES)
    optimizers = {name: RECIPES.get(name).optimizer for name in RECIPES.names()}
    # Only the authors' TF2 rewrite (kd_tf2, CO's recipe) steps with Keras' SGD.
    assert optimizers == {**{name: "tf1_momentum" for name in RECIPES.names()},
                          "kd_tf2": "keras_sgd"}
    config = TF1Momentum(0.1, momentum=0.5, nesterov=False).get_config()
    assert (config["momentum"], config["nesterov"]) == (0.5, False)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, numpy as np, tensorflow as tf
    from sskd_tf.training.optimizers import TF1Momentum
    from sskd_tf.training.schedule import EpochCut, learning_rate_schedule
    from sskd_tf.training.strategy import make_strategy

    strategy = make_strategy("mirrored")
    gradients = [np.array(g, np.float32) for g in json.loads(sys.stdin.read())]
    with strategy.scope():
        variable = keras.Variable(np.ones((3, 2), np.float32))
        optimizer = TF1Momentum(learning_rate_schedule(0.1, (0.25, 0.75), 0.1, epochs=4, cut=EpochCut.of_steps(2)))
        optimizer.build([variable])

    @tf.function
    def step(gradient):
        def replica_step():
            # Each replica holds half the gradient; Keras sums them across replicas.
            optimizer.apply_gradients([(gradient / 2.0, variable)])
        strategy.run(replica_step)

    for gradient in gradients:
        step(tf.constant(gradient))
    replicas = [v.numpy().tolist() for v in strategy.experimental_local_results(variable.value)]
    json.dump({"replicas": strategy.num_replicas_in_sync, "values": replicas}, sys.stdout)
""")


def test_tf1_momentum_under_a_mirrored_strategy_on_two_cpus():
    gradients = _gradients()
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO, capture_output=True,
                            text=True, input=json.dumps([g.tolist() for g in gradients]),
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["replicas"] == 2
    expected = tf1_momentum_numpy(np.ones((3, 2), np.float32), gradients, _rates())[-1]
    for values in out["values"]:
        np.testing.assert_allclose(np.array(values), expected, rtol=1e-6, atol=1e-6)


def test_the_flags_reach_the_run_and_the_default_is_tf1_momentum():
    import copy

    from absl import flags as absl_flags

    import flags  # noqa: F401  (defines the project's flags)
    from sskd_tf import models
    from sskd_tf.distill import build_method
    from sskd_tf.modes.run_config import config_from_flags
    from sskd_tf.training.run import build_distiller

    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--optimizer=keras_sgd", "--keras_batch_norm"])
    config = config_from_flags(flag_values)
    assert (config.optimizer, config.keras_batch_norm) == ("keras_sgd", True)
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--dataset=digits"])
    config = config_from_flags(flag_values).resolved()
    assert (config.optimizer, config.keras_batch_norm) == ("tf1_momentum", False)
    student = models.build_model("resnet8", 10, input_shape=(8, 8, 3))
    distiller = build_distiller(config, build_method("none"), None, student,
                                EpochCut.of_steps(3))
    assert isinstance(distiller.optimizer, TF1Momentum) and distiller.optimizer.nesterov
    with pytest.raises(absl_flags.IllegalFlagValueError, match="tf1_momentum"):
        copy.deepcopy(absl_flags.FLAGS)(["main.py", "--optimizer=adam"])


def pytorch_sgd_numpy(weights, gradients, rates, momentum, weight_decay):
    """torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov=False).step in
    float32: d_p = g + wd p; buf = d_p at the first step, else buf = m buf + d_p;
    p -= lr buf. Returns the weights after each step."""
    weights, buffer, history = weights.copy(), None, []
    m, wd = np.float32(momentum), np.float32(weight_decay)
    for gradient, rate in zip(gradients, rates):
        d_p = gradient + wd * weights
        buffer = d_p.copy() if buffer is None else buffer * m + d_p
        weights = weights - np.float32(rate) * buffer
        history.append(weights)
    return history


def test_the_crd2020_update_is_pytorchs_sgd_with_weight_decay_across_its_decays():
    """The recipe's optimizer and schedule, at one step an epoch, with the weight decay as
    the models attach it (an L2 loss), against RepDistiller's SGD and adjust_learning_rate
    (x0.1 from the 1-based epochs 151, 181, 211)."""
    from sskd_tf.models.common import l2_decay

    recipe = RECIPES.get("crd2020")
    schedule = learning_rate_schedule(recipe.learning_rate, recipe.lr_decay_points,
                                      recipe.lr_decay_rate, recipe.epochs, EpochCut.of_steps(1))
    optimizer = build_optimizer(recipe.optimizer, schedule, recipe.momentum, recipe.nesterov)
    decay = l2_decay(recipe.weight_decay)
    rng = np.random.default_rng(2)
    gradients = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(recipe.epochs)]
    variable = keras.Variable(_initial())
    history = []
    for gradient in gradients:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(variable * gradient) + decay(variable)
        optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])
        history.append(variable.numpy().copy())
    rates = [0.05 * 0.1 ** np.sum(epoch > np.array([150, 180, 210]))
             for epoch in range(1, recipe.epochs + 1)]
    expected = pytorch_sgd_numpy(_initial(), gradients, rates, 0.9, 5e-4)
    for step in (0, 1, 149, 150, 151, 179, 180, 210, 239):
        np.testing.assert_allclose(history[step], expected[step], rtol=2e-5, atol=2e-6,
                                   err_msg=f"step {step}")
