"""The "batched" backend: the leading singular components of a batch of matrices from
batched dense operations only (no Svd, SelfAdjointEig, Qr or Eig op, forward or backward).

A GPU runs `tf.linalg.svd` and `tf.linalg.eigh` one matrix at a time (cuSOLVER) for the
sizes of KD-SVD's taps; matmul, Cholesky, triangular and general solves run batched, and
XLA compiles them into a few kernels. The route (docs/benchmarks.md):

1. the Gram matrix G of the smaller side (as the "gram" backend), scaled to unit
   Frobenius norm;
2. block subspace iteration on G + mu I with a block of p >= r + 4 vectors, orthonormalised
   by Cholesky-QR applied twice (`_cholesky_qr`). The shift mu = 1e-3 keeps every
   iterate of full rank (condition number <= ~1e3), so the Cholesky factorisations exist
   even for rank-deficient or zero maps, and does not change the eigenvectors;
3. every `_CHECK_EVERY` iterations a Rayleigh-Ritz step: the p x p projected matrix is
   diagonalised by cyclic Jacobi rotations written with matmuls (`jacobi_eigh`), the
   basis rotated to the Ritz vectors; the loop stops when every kept Ritz pair's residual
   ||G w - theta w|| is below `_RESIDUAL_TOL` (relative to ||G||_F) or after
   `_MAX_ITERATIONS` iterations (a bounded `tf.while_loop`, compilable by XLA);
4. s, the other side and the signs as `dense.gram_svd` (its `column_signs` rule).

Backward, with only the r kept components: every coupling of a kept vector j with the
discarded ones, sum_d v_d v_d^T / (s_j^2 - s_d^2), is the resolvent of G restricted to
the complement of the kept vectors, obtained by one linear solve with
(s_j^2 + delta) I - P G P, P = I - W W^T (`_resolvent_solve`); the kept-kept couplings
are the r x r blocks of the full formulas. delta = eps * s_1^2 keeps the solve regular on
exactly degenerate (e.g. all-zero) maps; it changes 1/(s_j^2 - s_d^2) only where that
gap is within float rounding.
"""
import numpy as np
import tensorflow as tf

from sskd_tf.linalg import dense, gradients

# Block size: the kept r plus this many extra vectors (at least), capped at the size.
_EXTRA_VECTORS = 6
_SHIFT = 1e-3
_CHECK_EVERY = 4
_MAX_ITERATIONS = 200
_RESIDUAL_TOL = 2e-6
_MAX_SWEEPS = 12


def _matmul_t(a, b):
    return tf.matmul(a, b, transpose_a=True)


def _sym(a):
    return 0.5 * (a + gradients.transpose(a))


def _round_robin(p):
    """Pairs of the p-1 rounds of a round-robin tournament over p (even) indices: each
    round rotates p/2 disjoint pairs, every pair meets once per sweep."""
    players = list(range(p))
    rounds = []
    for _ in range(p - 1):
        rounds.append([(players[i], players[p - 1 - i]) for i in range(p // 2)])
        players = [players[0], players[-1]] + players[1:-1]
    return rounds


def _rotation_tables(p, dtype):
    """Per round (stacked on axis 0): flat indices of a_pp, a_qq and a_pq of its p/2
    pairs, and the constants that place c and s into a p x p rotation."""
    rounds = _round_robin(p)
    indices = np.zeros((len(rounds), 3, p // 2), np.int32)
    diagonal = np.zeros((len(rounds), p // 2, p * p))
    off = np.zeros((len(rounds), p // 2, p * p))
    for r, pairs in enumerate(rounds):
        for k, (i, j) in enumerate(sorted((min(i, j), max(i, j)) for i, j in pairs)):
            indices[r, :, k] = (i * p + i, j * p + j, i * p + j)
            diagonal[r, k, i * p + i] = diagonal[r, k, j * p + j] = 1.0
            off[r, k, i * p + j], off[r, k, j * p + i] = 1.0, -1.0
    return tf.constant(indices), tf.constant(diagonal, dtype), tf.constant(off, dtype)


def jacobi_eigh(h, tol=None):
    """Eigenvalues (descending) and eigenvectors of symmetric h [B, p, p] by cyclic Jacobi
    sweeps in round-robin order, each round one batched rotation J (A <- J^T A J) that
    zeroes p/2 off-diagonal pairs; stops when the off-diagonal part is below
    `tol` * ||h||_F (default: a few float eps) or after `_MAX_SWEEPS` sweeps.
    Jacobi converges quadratically and is accurate to rounding for every spectrum,
    repeated eigenvalues included (Golub & Van Loan, Matrix Computations, 8.5)."""
    p = h.shape[-1]
    dtype = h.dtype
    if p % 2:
        # Pad with an isolated zero eigenvalue (removed below): the tournament needs pairs.
        h = tf.pad(h, [[0, 0], [0, 1], [0, 1]])
    size = h.shape[-1]
    eps = float(np.finfo(dtype.as_numpy_dtype).eps)
    tol = 4.0 * eps if tol is None else tol
    indices, diagonal, off = _rotation_tables(size, dtype)
    rounds = size - 1
    batch = tf.shape(h)[0]
    eye = tf.eye(size, batch_shape=[batch], dtype=dtype)
    scale = tf.norm(h, axis=[-2, -1]) + float(np.finfo(dtype.as_numpy_dtype).tiny)

    def off_norm(a):
        return tf.norm(a - tf.linalg.diag(tf.linalg.diag_part(a)), axis=[-2, -1])

    def not_done(step, a, z):
        return tf.logical_or(step % rounds != 0, tf.reduce_any(off_norm(a) > tol * scale))

    def rotate(step, a, z):
        round_ = step % rounds
        flat = tf.reshape(a, [batch, size * size])
        a_pp, a_qq, a_pq = (tf.gather(flat, indices[round_, i], axis=1) for i in range(3))
        gap = a_qq - a_pp
        sign = tf.where(gap < 0, -tf.ones_like(gap), tf.ones_like(gap))
        t = tf.math.divide_no_nan(2.0 * a_pq * sign,
                                  tf.abs(gap) + tf.sqrt(tf.square(gap) + 4.0 * tf.square(a_pq)))
        c = tf.math.rsqrt(1.0 + tf.square(t))
        rotation = eye + tf.reshape(
            tf.matmul(c - 1.0, diagonal[round_]) + tf.matmul(t * c, off[round_]),
            [batch, size, size])
        a = _sym(tf.matmul(_matmul_t(rotation, a), rotation))
        return step + 1, a, tf.matmul(z, rotation)

    _, a, z = tf.while_loop(not_done, rotate, (tf.constant(0), h, eye),
                            maximum_iterations=_MAX_SWEEPS * rounds)
    values = tf.linalg.diag_part(a)
    if size != p:
        # The padded index never mixes (its row and column stay zero): dropping it is exact.
        values, z = values[:, :p], z[:, :p, :p]
    order = tf.argsort(values, axis=-1, direction="DESCENDING", stable=True)
    return tf.gather(values, order, batch_dims=1), tf.gather(z, order, axis=2, batch_dims=1)


def _cholesky_qr(y):
    """An orthonormal basis of the span of y [B, n, p] (full column rank, condition number
    well below 1/sqrt(eps)) by Cholesky-QR applied twice (CholQR2: Yamamoto et al. 2015).
    The first pass shifts its Gram matrix by a few eps * trace so that rounding cannot
    make the factorisation fail (the shift changes R, not the span); the second, on a
    nearly orthonormal basis, needs none and restores orthonormality to rounding."""
    p = y.shape[-1]
    eps = float(np.finfo(y.dtype.as_numpy_dtype).eps)
    tiny = float(np.finfo(y.dtype.as_numpy_dtype).tiny)
    eye = tf.eye(p, dtype=y.dtype)
    for shift_scale in (4.0 * p * eps, 0.0):
        gram = _sym(_matmul_t(y, y))
        shift = shift_scale * tf.linalg.trace(gram)[:, None, None] + tiny
        factor = tf.linalg.cholesky(gram + shift * eye)
        y = gradients.transpose(tf.linalg.triangular_solve(factor, gradients.transpose(y), lower=True))
    return y


def _start_block(n, p, dtype):
    """A fixed pseudo-random n x p block (the same for every call: a deterministic result)."""
    return tf.constant(np.random.default_rng(0).normal(size=(n, p)), dtype)


def top_eigenpairs(g, r):
    """The r largest eigenvalues (descending) and eigenvectors of the symmetric positive
    semi-definite g [B, n, n], by shifted block subspace iteration with Rayleigh-Ritz
    (see the module docstring). Returns (values [B, r], vectors [B, n, r], iterations)."""
    n = g.shape[-1]
    p = min(n, r + _EXTRA_VECTORS)
    dtype = g.dtype
    tiny = float(np.finfo(dtype.as_numpy_dtype).tiny)
    g = gradients.finite_or_zero(g)
    norm = tf.norm(g, axis=[-2, -1])
    g_unit = g / (norm[:, None, None] + tiny)
    shifted = g_unit + _SHIFT * tf.eye(n, dtype=dtype)
    start = tf.matmul(shifted, tf.broadcast_to(_start_block(n, p, dtype), [tf.shape(g)[0], n, p]))
    q = _cholesky_qr(start)

    def ritz(q):
        values, rotation = jacobi_eigh(_sym(_matmul_t(q, tf.matmul(g_unit, q))))
        q = tf.matmul(q, rotation)
        residual = tf.norm(tf.matmul(g_unit, q[:, :, :r]) - q[:, :, :r] * values[:, None, :r], axis=1)
        return values, q, tf.reduce_all(residual <= _RESIDUAL_TOL)

    def not_done(iteration, q, values, converged):
        return tf.logical_not(converged)

    def iterate(iteration, q, values, converged):
        for _ in range(_CHECK_EVERY):
            q = _cholesky_qr(tf.matmul(shifted, q))
        values, q, converged = ritz(q)
        return iteration + _CHECK_EVERY, q, values, converged

    values = tf.zeros([tf.shape(g)[0], p], dtype)
    iterations, q, values, _ = tf.while_loop(
        not_done, iterate, (tf.constant(0), q, values, tf.constant(False)),
        maximum_iterations=_MAX_ITERATIONS // _CHECK_EVERY)
    values = tf.maximum(values[:, :r], 0.0) * norm[:, None]
    return values, q[:, :, :r], iterations


def _resolvent_solve(g, w, values, rhs):
    """z_j = sum_d w_d w_d^T rhs_j / (values_j - lambda_d) over the eigenpairs (lambda_d,
    w_d) of the symmetric g [B, n, n] outside the kept w [B, n, r]: one solve per kept j
    with (values_j + delta) I - P g P, P = I - w w^T, of the projected right side."""
    n, r = g.shape[-1], w.shape[-1]
    eps = float(np.finfo(g.dtype.as_numpy_dtype).eps)
    tiny = float(np.finfo(g.dtype.as_numpy_dtype).tiny)
    g = gradients.finite_or_zero(g)
    projector = tf.eye(n, dtype=g.dtype) - tf.matmul(w, w, transpose_b=True)
    projected = _sym(tf.matmul(projector, tf.matmul(g, projector)))
    delta = eps * tf.reduce_max(values, axis=-1, keepdims=True) + tiny
    diagonal = values + delta
    matrices = diagonal[:, :, None, None] * tf.eye(n, dtype=g.dtype) - projected[:, None]
    rhs = tf.matmul(projector, gradients.finite_or_zero(rhs))
    columns = gradients.transpose(rhs)[:, :, :, None]
    solution = tf.linalg.solve(matrices, columns)[..., 0]
    del r
    return gradients.transpose(solution)


def _kept_block(values):
    """K^T of the original gradient over the kept components: 1/(s_j^2 - s_i^2) at [i, j]."""
    return gradients.original_k_transposed(tf.sqrt(values))


def _original_gradient(x, g, s, small, large, d_small_side_v, tall):
    """The authors' gradient (gradients.original_gradient) with r kept components; the
    couplings with the discarded ones are resolvent solves (see the module docstring)."""
    values = tf.square(s)
    if tall:
        v, dv = small, d_small_side_v
        inner = _kept_block(values) * _matmul_t(v, dv)
        y = tf.matmul(v, inner) + _resolvent_solve(g, v, values, dv)
        return 2.0 * tf.matmul(x, tf.matmul(y, v, transpose_b=True)
                               + tf.matmul(v, y, transpose_b=True))
    u, v, dv = small, large, d_small_side_v
    scaled = dv / (s[:, None, :] + gradients.ORIGINAL_INV_EPS)
    diag_term = tf.linalg.diag(tf.linalg.diag_part(_matmul_t(v, scaled)))
    inner = _kept_block(values) * _matmul_t(scaled, v * s[:, None, :])
    correction = diag_term + 2.0 * s[:, :, None] * (inner + gradients.transpose(inner))
    z = -_resolvent_solve(g, u, values, tf.matmul(x, scaled))
    grad_t = (tf.matmul(scaled - tf.matmul(v, correction), u, transpose_b=True)
              - 2.0 * tf.matmul(v * s[:, None, :], z, transpose_b=True)
              - 2.0 * tf.matmul(tf.matmul(x, z, transpose_a=True), u, transpose_b=True))
    return gradients.transpose(grad_t)


def _eigenvector_gradient(g, w, values, dw, s):
    """dL/dG of the kept eigenvectors w of g, d w_j = sum_{i != j} w_i w_i^T dG w_j /
    (lambda_j - lambda_i): kept i with `gradients.exact_gradient`'s Lorentzian broadening,
    discarded i by the resolvent."""
    eps_gap, _ = gradients.broadening(s)
    gap = values[:, None, :] - values[:, :, None]
    f = gap / (tf.square(gap) + eps_gap)
    eye = tf.eye(values.shape[-1], dtype=values.dtype)
    f = f * (1.0 - eye)
    coupling = tf.matmul(w, f * _matmul_t(w, dw)) + _resolvent_solve(g, w, values, dw)
    return tf.matmul(coupling, w, transpose_b=True)


def _gram(x, tall):
    return tf.matmul(x, x, transpose_a=tall, transpose_b=not tall)


def _small_side(x, r, tall):
    """(s [B, r], small-side vectors [B, n, r], G) of the kept components."""
    g = _gram(x, tall)
    values, vectors, _ = top_eigenpairs(g, r)
    return tf.sqrt(values), vectors, g


def _other_side(x, small, tall):
    large = tf.matmul(x, small, transpose_a=not tall)
    return gradients.finite_or_zero(large / tf.norm(large, axis=-2, keepdims=True))


def _signed(small, large, tall):
    u, v = (large, small) if tall else (small, large)
    signs = tf.stop_gradient(dense.column_signs(v))[:, None, :]
    return u * signs, v * signs


def _original_decomposition(x, r, tall, gradient):
    """(s, u, v) with the authors' or the 2018 release's backward formula."""

    @tf.custom_gradient
    def decomposition(x):
        s, small, g = _small_side(x, r, tall)
        u, v = _signed(small, _other_side(x, small, tall), tall)

        def backward(ds, du, dv):
            dv = gradients.zeros_if_none(dv, v)
            if gradient == "eccv":
                return gradients.eccv_gradient(s, u, v, gradients.zeros_if_none(ds, s),
                                             gradients.zeros_if_none(du, u), dv)
            return _original_gradient(x, g, s, u if not tall else v, v, dv, tall)

        return (s, u, v), backward

    return decomposition(x)


def _exact_decomposition(x, r, tall):
    """(s, u, v) with the true gradient: a custom gradient for the kept eigenvectors of
    the Gram matrix, the rest (s = ||X w||, the other side X w / s) differentiated by
    TensorFlow. Equal to Townsend's formula (gradients.exact_gradient) for the kept
    components; the kept-kept couplings are broadened as there."""

    @tf.custom_gradient
    def kept_vectors(x):
        s, small, g = _small_side(x, r, tall)

        def backward(d_small):
            d_g = _eigenvector_gradient(g, small, tf.square(s), d_small, s)
            d_g = d_g + gradients.transpose(d_g)
            return tf.matmul(x, d_g) if tall else tf.matmul(d_g, x)

        return small, backward

    small = kept_vectors(x)
    large = tf.matmul(x, small, transpose_a=not tall)
    squared = tf.reduce_sum(tf.square(large), axis=-2)
    positive = squared > 0
    s = tf.where(positive, tf.sqrt(tf.where(positive, squared, tf.ones_like(squared))), 0.0)
    large = tf.math.divide_no_nan(large, s[:, None, :])
    u, v = _signed(small, large, tall)
    return s, u, v


@tf.autograph.experimental.do_not_convert
def batched_svd(x, gradient="original", components=None):
    """The leading `components` singular triplets of x [B, M, N] (all min(M, N) when None)
    by batched dense operations only, returning (s [B, r], u [B, M, r], v [B, N, r]) equal
    to `dense.gram_svd`'s first r (same sign rule), with the backward formula
    `gradient` ("original", "exact" or "eccv") computed from the kept components alone.
    Columns of zero singular value are zeros on the larger side, as in gram_svd."""
    gradients.check_matrices(x)
    if gradient not in gradients.GRADIENTS:
        raise ValueError(f"unknown SVD gradient {gradient!r}; choose one of: "
                         f"{', '.join(gradients.GRADIENTS)}")
    m, n = x.shape[-2], x.shape[-1]
    r = min(m, n) if components is None else min(components, m, n)
    tall = m >= n
    if gradient == "exact":
        return _exact_decomposition(x, r, tall)
    return _original_decomposition(x, r, tall, gradient)


def batched_eid(x, gradient="original", components=None):
    """KD-EID (`dense.eid`) through `batched_svd`, keeping the square band's
    stop-gradient quirk of the original gradient."""
    gradients.check_matrices(x)
    if dense.in_square_band(x) and gradient == "original":
        x = tf.stop_gradient(x)
    return batched_svd(x, gradient, components)
