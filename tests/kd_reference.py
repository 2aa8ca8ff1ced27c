"""Numpy pieces the transcriptions of the authors' distillation losses share (float64), and
the central difference their gradients are checked against."""
import numpy as np

FINITE_DIFFERENCE_STEP = 1e-6


def log_softmax(x):
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def softmax(x):
    return np.exp(log_softmax(x))


def batch_norm(x, gamma, beta, mean=None, variance=None, epsilon=1e-5):
    """tf.contrib batch_norm over the first axis: the biased batch statistics when no moving
    ones are given."""
    if mean is None:
        mean, variance = x.mean(axis=0), x.var(axis=0)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def central_difference(f, step=FINITE_DIFFERENCE_STEP):
    """d/dt f(t) at t = 0."""
    return (f(step) - f(-step)) / (2 * step)


def directions(arrays, seed):
    """One random unit direction per array, of its shape."""
    rng = np.random.default_rng(seed)
    out = []
    for array in arrays:
        d = rng.normal(size=np.shape(array))
        out.append(d / np.linalg.norm(d))
    return out
