"""The "batched" backend (sskd_tf/linalg/batched.py): only batched dense operations in
the traced train step, forward and backward; the factors, loss and gradients of the
"gram" backend on the resnet32 -> resnet8 tap shapes and on degenerate spectra, eagerly
and under XLA; and the placement of the decompositions (--decomposition_device)."""
import copy
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags  # noqa: F401  (defines the flags of main.py)
from sskd_tf import linalg
from sskd_tf.linalg import batched as linalg_batched
from sskd_tf.distill import build_method
from sskd_tf.distill.kd_svd import svd_kd_loss
from sskd_tf.linalg import decomposition_device
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller

from toy_networks import toy_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESNET_TAPS = [(32, 32, 64), (16, 16, 128), (8, 8, 256)]
# Ops that decompose a matrix: none may appear in the batched backend's graph.
DECOMPOSITION_OPS = {"Svd", "BatchSvd", "SelfAdjointEig", "SelfAdjointEigV2",
                     "BatchSelfAdjointEig", "BatchSelfAdjointEigV2", "Qr", "BatchQr", "Eig"}


def _maps(taps, batch, seed, relu=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    maps = [rng.normal(size=(batch,) + tap) for tap in taps]
    return [(np.maximum(m, 0.0) if relu else m).astype(dtype) for m in maps]


def _relative(a, b):
    difference = np.linalg.norm(a - b)
    return difference and difference / np.linalg.norm(b)


def _loss_and_grads_fn(variant, gradient, backend, jit=False):
    @tf.function(jit_compile=jit)
    def loss_and_grads(student, teacher):
        with tf.GradientTape() as tape:
            tape.watch(student)
            loss = svd_kd_loss(student, teacher, variant, gradient, backend=backend)
        return loss, tape.gradient(loss, student)

    return loss_and_grads


def _assert_batched_equals_gram(student, teacher, variant, gradient, jit=False,
                                reference_dtype=None):
    """Loss within 1e-4 relative and every student gradient within 1e-3 (relative
    norm) of the gram backend's (computed in `reference_dtype`, default the maps')."""
    student = [tf.constant(m) for m in student]
    teacher = [tf.constant(m) for m in teacher]
    loss, grads = _loss_and_grads_fn(variant, gradient, "batched", jit)(student, teacher)
    dtype = reference_dtype or student[0].dtype
    ref_loss, ref_grads = _loss_and_grads_fn(variant, gradient, "gram")(
        [tf.cast(m, dtype) for m in student], [tf.cast(m, dtype) for m in teacher])
    assert abs(float(loss) - float(ref_loss)) <= 1e-4 * abs(float(ref_loss))
    for got, want in zip(grads, ref_grads):
        assert np.all(np.isfinite(got.numpy()))
        assert _relative(got.numpy().astype(np.float64), want.numpy()) < 1e-3


# ---------------------------------------------------------------- the dense pieces


def test_jacobi_eigh_matches_numpy_on_repeated_eigenvalues():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 9, 9)))
    values = np.array([5.0, 5.0, 5.0 * (1 + 1e-6), 2.0, 1.0, 0.0, 0.0, -1.0, 3.0])
    h = q @ (values[None, :, None] * np.swapaxes(q, 1, 2))
    got_values, got_vectors = (t.numpy() for t in linalg_batched.jacobi_eigh(tf.constant(h)))
    np.testing.assert_allclose(got_values, np.sort(values)[::-1][None].repeat(4, 0), atol=1e-12)
    np.testing.assert_allclose(got_vectors @ (got_values[:, :, None] * np.swapaxes(got_vectors, 1, 2)),
                               h, atol=1e-12)
    np.testing.assert_allclose(np.swapaxes(got_vectors, 1, 2) @ got_vectors,
                               np.eye(9)[None].repeat(4, 0), atol=1e-12)


def _spectrum_maps(singular_values, shape, seed):
    """x = A diag(s) B^T [B, M, N] with random orthonormal A, B and the given s."""
    rng = np.random.default_rng(seed)
    batch, m, n = shape
    k = len(singular_values)
    left, _ = np.linalg.qr(rng.normal(size=(batch, m, k)))
    right, _ = np.linalg.qr(rng.normal(size=(batch, n, k)))
    return left @ (np.asarray(singular_values)[None, :, None] * np.swapaxes(right, 1, 2))


# Near-repeated kept values, a gap at the cut, zero singular values (rank 6 < size).
DEGENERATE_SPECTRUM = [10.0, 10.0 * (1 - 1e-3), 6.0, 3.0, 3.0 * (1 - 1e-3), 1.0, 0.0, 0.0]


@pytest.mark.parametrize("shape", [(3, 40, 8), (3, 8, 40)])
def test_factors_are_gram_factors_on_a_degenerate_spectrum(shape):
    x = tf.constant(_spectrum_maps(DEGENERATE_SPECTRUM, shape, seed=1))
    s, u, v = (t.numpy() for t in linalg_batched.batched_svd(x, components=4))
    s_ref, u_ref, v_ref = (t.numpy()[..., :4] for t in linalg.gram_svd(x))
    np.testing.assert_allclose(s, s_ref[:, :4], rtol=1e-6)
    # A pair 1e-3 apart is resolved to (tolerance / gap) by the residual test.
    np.testing.assert_allclose(v, v_ref, atol=1e-4)
    np.testing.assert_allclose(u, u_ref, atol=1e-4)


def test_rank_deficient_and_zero_maps_give_finite_orthonormal_factors():
    x = np.zeros((2, 30, 6))
    x[1] = _spectrum_maps([2.0, 1.0], (1, 30, 6), seed=2)[0]
    s, u, v = (t.numpy() for t in linalg_batched.batched_svd(tf.constant(x), components=4))
    np.testing.assert_allclose(s[1], [2.0, 1.0, 0.0, 0.0], atol=1e-7)
    assert not np.any(s[0]) and not np.any(u[0]) and np.all(np.isfinite(u))
    np.testing.assert_allclose(np.swapaxes(v, 1, 2) @ v, np.eye(4)[None].repeat(2, 0), atol=1e-6)


# ---------------------------------------------------------------- equal to gram


@pytest.mark.parametrize("variant,gradient", [
    ("refined", "original"), ("eid", "original"), ("eccv", "original"), ("refined", "exact"),
    pytest.param("eid", "exact", marks=pytest.mark.slow),
    pytest.param("eccv", "exact", marks=pytest.mark.slow)])
def test_equals_gram_on_the_resnet_taps(variant, gradient):
    _assert_batched_equals_gram(_maps(RESNET_TAPS, 2, seed=3), _maps(RESNET_TAPS, 2, seed=4),
                                variant, gradient)


def test_equals_gram_on_signed_maps():
    """Non-negative maps have a dominant first component; signed ones a flat spectrum,
    the slowest case for subspace iteration and an ill-conditioned one for float32:
    there gram's own float32 gradient is 1.8e-3 from its float64 one on the wide tap
    (batched's: 1.1e-4), so the reference is gram in float64. (Not for "exact": its
    Lorentzian broadening scales with the dtype's precision, so float64 is another
    function there.)"""
    _assert_batched_equals_gram(_maps(RESNET_TAPS, 2, seed=5, relu=False),
                                _maps(RESNET_TAPS, 2, seed=6, relu=False), "refined", "original",
                                reference_dtype=tf.float64)


@pytest.mark.parametrize("batch", [1, 128])
def test_equals_gram_at_batch_sizes_1_and_128(batch):
    taps = RESNET_TAPS[1:]
    _assert_batched_equals_gram(_maps(taps, batch, seed=7), _maps(taps, batch, seed=8),
                                "refined", "original")


@pytest.mark.parametrize("gradient", ["original", "exact"])
def test_equals_gram_on_degenerate_spectra(gradient):
    """Student maps with near-repeated and zero singular values (float64, where the gram
    backend is accurate to rounding); the teacher shares the student's right vectors up
    to a perturbation, as a trained pair does."""
    shapes = [(2, 64, 16), (2, 16, 32)]
    student = [_spectrum_maps(DEGENERATE_SPECTRUM, shape, seed) for seed, shape in enumerate(shapes)]
    noise = np.random.default_rng(9)
    teacher = [m + 0.1 * noise.normal(size=m.shape) for m in student]
    student = [m.reshape(2, 8, -1, m.shape[-1]) for m in student]
    teacher = [m.reshape(2, 8, -1, m.shape[-1]) for m in teacher]
    _assert_batched_equals_gram(student, teacher, "refined", gradient)


@pytest.mark.parametrize("gradient", ["original", pytest.param("exact", marks=pytest.mark.slow)])
def test_equals_gram_under_xla(gradient):
    taps = [(8, 8, 16), (4, 4, 32)]
    _assert_batched_equals_gram(_maps(taps, 4, seed=10), _maps(taps, 4, seed=11), "refined",
                                gradient, jit=True)


# ---------------------------------------------------------------- the traced train step


def _distiller(**options):
    distiller = Distiller(toy_network(1), toy_network(0), loss_of(build_method("svd", **options)),
                          steps_in_epoch=2)
    distiller.build((None, 8, 8, 3))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.optimizer.build(distiller.trainable_variables)
    return distiller


_STEP_SIGNATURE = (tf.TensorSpec([4, 8, 8, 3], tf.float32), tf.TensorSpec([4], tf.int32))


def _step_ops(step):
    """(op type, requested device) of every node of the traced step, nested function
    bodies (gradients, while loops, conds) included."""
    graph_def = tf.function(step).get_concrete_function(_STEP_SIGNATURE).graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes += list(function.node_def)
    return [(node.op, node.device) for node in nodes]


def test_traced_train_step_has_no_decomposition_op():
    ops = {op for op, _ in _step_ops(_distiller(backend="batched").train_step)}
    assert not ops & DECOMPOSITION_OPS
    assert {"Cholesky", "MatrixTriangularSolve", "MatrixSolve"} <= ops
    # The same inspection finds the eigh of the gram backend.
    assert "SelfAdjointEigV2" in {op for op, _ in _step_ops(_distiller(backend="gram").train_step)}


def test_train_step_descends_and_matches_gram():
    images = tf.constant(np.random.default_rng(12).normal(size=(4, 8, 8, 3)), tf.float32)
    labels = tf.constant([0, 1, 2, 0])
    updates = {}
    for backend in ("batched", "gram"):
        distiller = _distiller(backend=backend)
        before = [v.numpy() for v in distiller.trainable_variables]
        logs = tf.function(distiller.train_step)((images, labels))
        updates[backend] = ([b - v.numpy() for b, v in zip(before, distiller.trainable_variables)],
                            float(logs["svd_loss"]))
    assert updates["batched"][1] == pytest.approx(updates["gram"][1], rel=1e-4)
    for got, want in zip(updates["batched"][0], updates["gram"][0]):
        assert _relative(got, want) < 1e-3


# ---------------------------------------------------------------- placement


def _decomposition_devices(step):
    return {device for op, device in _step_ops(step) if op in DECOMPOSITION_OPS}


def _on(device, distiller):
    def step(data):
        with tf.device(device):
            return distiller.train_step(data)

    return step


@pytest.mark.parametrize("choice,expected", [
    ("auto", "/device:CPU:0"), ("cpu", "/device:CPU:0"), ("accelerator", "/device:GPU:0")])
def test_decompositions_of_a_step_on_an_accelerator(choice, expected):
    """A step traced under a GPU device scope (as MirroredStrategy traces each replica on
    its GPU): auto and cpu request the host CPU for the Svd ops, accelerator leaves them
    with the step."""
    distiller = _distiller(decomposition_device=choice)
    assert _decomposition_devices(_on("/device:GPU:0", distiller)) == {expected}


@pytest.mark.parametrize("choice,expected", [("auto", ""), ("cpu", "/device:CPU:0")])
def test_decompositions_of_a_step_on_the_cpu(choice, expected):
    """On a CPU-only machine the faithful default places nothing (the step is already
    on the CPU)."""
    distiller = _distiller(decomposition_device=choice)
    assert _decomposition_devices(distiller.train_step) == {expected}


_REPLICA_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
from sskd_tf.training.strategy import make_strategy
strategy = make_strategy("mirrored")
from tests.test_batched_backend import _distiller, _replica_devices
with strategy.scope():
    distillers = {choice: _distiller(decomposition_device=choice) for choice in ("auto", "cpu")}
print(json.dumps({choice: sorted(_replica_devices(strategy, d)) for choice, d in distillers.items()}))
"""


def _replica_devices(strategy, distiller):
    def step(data):
        return strategy.run(distiller.train_step, args=(data,))

    return _decomposition_devices(step)


def test_each_replica_decomposes_on_its_host_cpu():
    """MirroredStrategy over two logical CPUs (in a fresh process: they must be made
    before TensorFlow starts): under auto (a CPU step) each replica's decompositions
    stay on its own device; under cpu they are requested on the host CPU."""
    completed = subprocess.run([sys.executable, "-c", _REPLICA_SCRIPT], cwd=REPO,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-2000:]
    devices = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {tf.DeviceSpec.from_string(d).device_index for d in devices["auto"]} == {0, 1}
    assert [tf.DeviceSpec.from_string(d).replace(job=None, replica=None, task=None).to_string()
            for d in devices["cpu"]] == ["/device:CPU:0"]


def test_replica_on_a_gpu_decomposes_on_its_task_cpu():
    spec = "/job:worker/replica:0/task:1/device:GPU:1"
    with tf.Graph().as_default(), tf.device(spec):
        assert decomposition_device("auto") == "/job:worker/replica:0/task:1/device:CPU:0"
        assert decomposition_device("accelerator") is None


def test_unknown_decomposition_device_is_a_clear_error():
    with pytest.raises(ValueError, match="decomposition_device='tpu'; choose one of: auto, cpu, "
                                         "accelerator"):
        build_method("svd", decomposition_device="tpu")


@pytest.mark.parametrize("choice", ["auto", "cpu", "accelerator"])
def test_decomposition_device_flag_reaches_the_method(choice):
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--method=svd", f"--decomposition_device={choice}",
                 "--svd_backend=batched"])
    options = config_from_flags(flag_values).method_options
    assert build_method("svd", **options).options.decomposition_device == choice
    assert options["backend"] == "batched"


def test_jit_advice_on_an_accelerator(monkeypatch):
    """With an accelerator (faked: this machine has none), a compiled step is told to
    keep its decompositions with it; without one, gram and batched need no advice."""
    assert build_method("svd", backend="batched").jit_advice() == ""
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["gpu"] if kind == "GPU" else [])
    assert "--decomposition_device=accelerator" in build_method("svd", backend="batched").jit_advice()
    assert build_method("svd", backend="batched",
                        decomposition_device="accelerator").jit_advice() == ""
