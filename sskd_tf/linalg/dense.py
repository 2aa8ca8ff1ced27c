"""The dense decompositions of batched feature matrices: `tf.linalg.svd` ("linalg_svd"),
the eigendecomposition of the smaller Gram matrix ("gram"), and KD-EID's route (`eid`,
docs/method.md section 2), each with a backward formula of `gradients.GRADIENTS`."""
import tensorflow as tf

from sskd_tf.linalg.gradients import (check_matrices, decompose_with_gradient,
                                      finite_or_zero, original_tall_gradient_from_x)

def _thin_svd(x):
    return tf.linalg.svd(x, full_matrices=False)


def svd(x, gradient="original"):
    """Thin SVD of x [B, M, N] by `tf.linalg.svd`, returning (s, u, v).

    Uses TensorFlow's sign convention, which the loss depends on (docs/method.md section 1).
    `gradient` is one of GRADIENTS (see the module docstring).
    """
    return decompose_with_gradient(x, _thin_svd, gradient)


def _gram_decomposition(x):
    """SVD of x read off an eigen/singular decomposition of its smaller Gram matrix
    (KD_methods_with_TF `SVD_eid`, docs/method.md section 2).

    Wide (M < N): U from the SVD of X X^T, V = X^T U with unit columns, s = norms.
    Tall (M >= N): V = eigenvectors of X^T X reordered to descending eigenvalue,
    U = X V with unit columns, s = norms. Columns of zero norm become zeros.
    """
    m, n = x.shape[-2], x.shape[-1]
    if m < n:
        _, u, _ = tf.linalg.svd(tf.matmul(x, x, transpose_b=True), full_matrices=False)
        v = tf.matmul(x, u, transpose_a=True)
        s = tf.norm(v, axis=1)
        v = finite_or_zero(v / s[:, None, :])
        return s, u, v
    _, v = tf.linalg.eigh(tf.matmul(x, x, transpose_a=True))
    v = tf.reverse(v, axis=[-1])
    u = tf.matmul(x, v)
    s = tf.norm(u, axis=1)
    u = finite_or_zero(u / s[:, None, :])
    return s, u, v


def column_signs(v):
    """+1 or -1 per column of v [B, N, k]: the sign of the column's entry of largest
    magnitude (the first such entry on a tie; +1 for a zero column)."""
    pivot_rows = tf.argmax(tf.abs(v), axis=1)
    pivots = tf.reduce_sum(v * tf.one_hot(pivot_rows, v.shape[1], axis=1, dtype=v.dtype), axis=1)
    return tf.where(pivots < 0, -tf.ones_like(pivots), tf.ones_like(pivots))


def _gram_eigh_decomposition(x):
    """Thin SVD of x from `tf.linalg.eigh` of the Gram matrix of its smaller side.

    The eigenvectors, in descending order, are V (tall, M >= N: X^T X) or U (wide:
    X X^T); s = the square roots of the eigenvalues (negative rounding clamped to 0);
    the other side is X V (or X^T U) with unit columns, zero columns where X maps
    the vector to zero. Signs: `column_signs(V)` is made +1, flipping U alongside.
    Precision: the Gram matrix squares the condition number, so in float32 a
    component's error grows like eps * s_1^2 / (s_i^2 - s_(i+1)^2) instead of
    eps * s_1 / (s_i - s_(i+1)); the leading components the loss keeps stay about
    as accurate as `tf.linalg.svd`'s (docs/benchmarks.md), and float64 throughout
    would cost about twice the time, so the input's dtype is kept.
    """
    tall = x.shape[-2] >= x.shape[-1]
    eigenvalues, vectors = tf.linalg.eigh(tf.matmul(x, x, transpose_a=tall, transpose_b=not tall))
    s = tf.sqrt(tf.maximum(tf.reverse(eigenvalues, axis=[-1]), 0.0))
    small = tf.reverse(vectors, axis=[-1])
    large = tf.matmul(x, small, transpose_a=not tall)
    large = finite_or_zero(large / tf.norm(large, axis=-2, keepdims=True))
    u, v = (large, small) if tall else (small, large)
    signs = column_signs(v)[:, None, :]
    return s, u * signs, v * signs


def gram_svd(x, gradient="original"):
    """Thin SVD of x [B, M, N] through `tf.linalg.eigh` of its k x k Gram matrix
    (the "gram" backend), returning (s, u, v) with the backward formula `gradient`.

    The same factors as `svd` up to two documented differences:
    - signs: every column of V has its largest-magnitude entry positive (U follows).
      `tf.linalg.svd` follows no rule a cheaper route could reproduce: on CPU it is
      whatever Eigen's divide-and-conquer SVD returns, and under XLA another (Jacobi)
      algorithm's; measured on random and on non-negative (ReLU) matrices, the sign
      of its first right vector is +-1 with probability about 1/2 each.
    - columns of zero singular value: zeros on the larger side, not an arbitrary
      orthonormal completion (as in KD-EID).
    The KD-SVD loss is invariant to the student's signs, so the two backends give
    the same loss whenever the teacher's vectors of consecutive taps carry the same
    relative signs under both conventions.
    Cost: for tall maps with the original gradient, U is never formed (see
    `original_tall_gradient_from_x`), so a map whose U nobody reads (the teacher's,
    and the student's in KD-SVD) costs one Gram product, one eigh and, with a
    gradient, one more product of X's size.
    """
    check_matrices(x)
    if gradient != "original" or x.shape[-2] < x.shape[-1]:
        return decompose_with_gradient(x, _gram_eigh_decomposition, gradient)

    def original_tall(s, u, v, ds, du, dv):
        del u, ds, du
        return original_tall_gradient_from_x(x, s, v, dv)

    return decompose_with_gradient(x, _gram_eigh_decomposition, original_tall)


def in_square_band(x):
    """True for the maps [B, M, N] that KD-EID decomposes by a plain SVD: 2/3 < M/N < 3/2."""
    m, n = x.shape[-2], x.shape[-1]
    return 2.0 / 3.0 < m / n < 3.0 / 2.0


def eid(x, gradient="original", backend="linalg_svd"):
    """The KD-EID decomposition of x [B, M, N] (docs/method.md section 2), returning (s, u, v).

    The factors come from the Gram matrix of the smaller side; the backward pass
    is the SVD gradient `gradient` evaluated at those factors. Quirk kept in
    faithful mode (`gradient="original"`): when 2/3 < M/N < 3/2 the authors ran a
    plain SVD on a stop-gradient copy of x, so no gradient reaches that map.
    With `gradient="exact"` that branch is differentiated like the others.
    backend "linalg_svd" is the authors' route (an SVD of the Gram matrix when M < N, a
    plain SVD in the square band); "gram" uses `gram_svd` everywhere, keeping the
    square band's stop-gradient quirk.
    """
    check_matrices(x)
    if backend not in ("linalg_svd", "gram"):
        raise ValueError(f"eid decomposes by linalg_svd or gram, not {backend!r}")
    plain = svd if backend == "linalg_svd" else gram_svd
    if in_square_band(x):
        if gradient == "original":
            return plain(tf.stop_gradient(x), gradient)
        return plain(x, gradient)
    if backend == "gram":
        return gram_svd(x, gradient)
    return decompose_with_gradient(x, _gram_decomposition, gradient)
