"""Part 2: the decomposition alone, forward + backward, on the three resnet taps
(batch 128: [128, 1024, 64], [128, 256, 128], [128, 64, 256]), for `tf.linalg.svd`
(`linalg.svd`), KD-EID's Gram route (`linalg.eid`) and the "gram" backend
(`linalg.gram_svd`; also in float64 throughout, to price the precision, and compiled
by XLA) and the "batched" backend (`linalg.batched.batched_svd`, its first 4
components, eager graph and XLA), each with the authors' original gradient; and the error of the kept
components against a float64 `tf.linalg.svd`, up to the sign of each column.
`tf.linalg.svd` under XLA is left out: on this CPU its first call on the first tap
had not finished after 15 minutes (docs/benchmarks.md).
"""
import numpy as np
import tensorflow as tf

from sskd_tf import linalg
from sskd_tf.linalg import batched as linalg_batched

TAP_MATRICES = ((1024, 64), (256, 128), (64, 256))
KEPT = 4


def _gram_float64(x, gradient):
    return tuple(tf.cast(t, x.dtype) for t in linalg.gram_svd(tf.cast(x, tf.float64), gradient))


def _batched(x, gradient):
    return linalg_batched.batched_svd(x, gradient, KEPT)


# name: (decomposition, compiled by XLA)
ROUTES = {
    "tf.linalg.svd": (linalg.svd, False),
    "eid (Gram route)": (linalg.eid, False),
    "gram": (linalg.gram_svd, False),
    "gram, float64": (_gram_float64, False),
    "gram, XLA": (linalg.gram_svd, True),
    "batched": (_batched, False),
    "batched, XLA": (_batched, True),
}


def tap_matrices(batch_size, seed=0):
    """Non-negative (post-ReLU-like) float32 maps of the three tap shapes."""
    rng = np.random.default_rng(seed)
    return [tf.constant(np.maximum(rng.normal(size=(batch_size, m, n)), 0.0).astype(np.float32))
            for m, n in TAP_MATRICES]


def forward_backward(route, x, jit=False):
    """A compiled fn running the decomposition and the original gradient of a loss on
    its kept components (like the KD-SVD student's), returning the gradient."""
    k = min(x.shape[1:])
    rng = np.random.default_rng(1)
    weights_v = tf.constant(rng.normal(size=(1, x.shape[2], k)).astype(np.float32))
    weights_v = weights_v * tf.cast(tf.range(k) < KEPT, tf.float32)

    @tf.function(jit_compile=jit)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            _, _, v = route(x, "original")
            loss = tf.reduce_sum(weights_v[:, :, :v.shape[-1]] * v)
        return tape.gradient(loss, x)

    return lambda: run(x).numpy()


def _sign_aligned_error(v, reference):
    signs = np.sign(np.sum(v * reference, axis=1, keepdims=True))
    return float(np.max(np.abs(v * np.where(signs == 0, 1.0, signs) - reference)))


def component_errors(route, x, jit=False):
    """Max error of the first KEPT singular values (relative to s_1) and right vectors
    against float64 tf.linalg.svd, each vector sign-aligned to the reference."""
    s_ref, _, v_ref = (t.numpy() for t in tf.linalg.svd(tf.cast(x, tf.float64), full_matrices=False))
    decompose = tf.function(lambda x: route(x, "original"), jit_compile=jit)
    s, _, v = (t.numpy() for t in decompose(x))
    s_error = np.max(np.abs(s[:, :KEPT] - s_ref[:, :KEPT]) / s_ref[:, :1])
    return {"s_error": float(s_error),
            "v_error": _sign_aligned_error(v[:, :, :KEPT], v_ref[:, :, :KEPT])}
