"""Thin SVD of batched feature matrices, with the gradients the method needs.

A feature map [B, H, W, D] is read as a batch of matrices X [B, M, N] with
M = H*W and N = D. Every decomposition here returns `(s, u, v)` with
s [B, k], u [B, M, k], v [B, N, k], k = min(M, N), singular values descending,
and attaches one of three backward formulas (docs/method.md sections 3 and 4):

- "original": the authors' hand-written gradient (KD_methods_with_TF
  `nets/SVP.py`). Faithful default. It ignores ds; the tall branch (N <= M)
  ignores dU and equals exactly twice the true gradient of a loss on V; the wide
  branch (N > M) is not proportional to the true gradient.
- "exact": the true gradient of the thin SVD (Townsend 2016, "Differentiating
  the Singular Value Decomposition"), with Lorentzian broadening of the
  1/(s_j^2 - s_i^2) factors and of 1/s so that it stays finite when singular
  values repeat or vanish.
- "eccv": the gradient of the 2018 release (SSKD_SVD `nets/Distillation.py`).
  Its 1/(s_i^2 - s_j^2) matrix passes through a per-sample guard that zeroes the
  sample when any entry is non-finite; the diagonal is always 1/0, so that
  matrix is zero for every sample and only wide (M < N) maps get a gradient.

Two backends compute the factors (`BACKENDS`):

- "linalg_svd": `tf.linalg.svd` (KD-EID: its own Gram route, docs/method.md section 2). Faithful.
- "gram": `gram_svd`, the eigendecomposition of the Gram matrix of the smaller
  side, several times faster on CPU. Its signs follow `column_signs`, not
  `tf.linalg.svd`'s (which has no rule: see `gram_svd`).

Matrix sizes M and N must be static.
"""
import numpy as np
import tensorflow as tf

from sskd_tf.errors import UserError

GRADIENTS = ("original", "exact", "eccv")
BACKENDS = ("linalg_svd", "gram")

# The authors' wide-branch guard on 1/s.
_ORIGINAL_INV_EPS = 1e-8
# The 2018 release differentiates through at most this many components.
_ECCV_MAX_COMPONENTS = 5


def _finite_or_zero(x):
    return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))


def _transpose(x):
    return tf.linalg.matrix_transpose(x)


def _zeros_if_none(grad, like):
    return tf.zeros_like(like) if grad is None else grad


def _original_gradient(s, u, v, ds, du, dv):
    """dL/dX by the authors' formula (docs/method.md section 3); ds is ignored.

    K[i, j] = 1/(s_i^2 - s_j^2) off the diagonal, sym(A) = A + A^T.
    Tall (N <= M): dX = 2 U S sym(K^T o (V^T dV)) V^T (dU ignored).
    Wide (N > M): the same derivation with the roles of U and V swapped, which
    uses dV / (s + 1e-8) and a first-order correction; it differs from the
    true gradient (kept: faithful mode).
    """
    del ds
    k_transposed = _original_k_transposed(s)
    if v.shape[-2] <= u.shape[-2]:
        sym = _original_tall_sym(k_transposed, v, dv)
        return 2.0 * tf.matmul(u * s[:, None, :], tf.matmul(sym, v, transpose_b=True))
    # Wide: swap the roles of the two sides; dU of the original problem is unused.
    left, right, d_left = v, u, dv
    scaled = d_left / (s[:, None, :] + _ORIGINAL_INV_EPS)
    diag_term = tf.linalg.diag(tf.linalg.diag_part(tf.matmul(left, scaled, transpose_a=True)))
    inner = k_transposed * tf.matmul(scaled, left * s[:, None, :], transpose_a=True)
    sym = inner + _transpose(inner)
    correction = diag_term + 2.0 * s[:, :, None] * sym
    grad_t = tf.matmul(scaled - tf.matmul(left, correction), right, transpose_b=True)
    return _transpose(grad_t)


def _original_k_transposed(s):
    """K^T of the authors' gradient: K[i, j] = 1/(s_i^2 - s_j^2) off the diagonal,
    0 on it, non-finite entries 0."""
    k = s.shape[-1]
    eye = tf.eye(k, dtype=s.dtype)
    s2 = tf.square(s)
    k_matrix = (1.0 - eye) / (s2[:, :, None] - s2[:, None, :] + eye)
    return _finite_or_zero(_transpose(k_matrix))


def _original_tall_sym(k_transposed, v, dv):
    """sym(K^T o (V^T dV)) of the authors' tall branch, sym(A) = A + A^T."""
    inner = k_transposed * tf.matmul(v, dv, transpose_a=True)
    return inner + _transpose(inner)


def _original_tall_gradient_from_x(x, s, v, dv):
    """The authors' tall-branch gradient 2 U S sym(K^T o (V^T dV)) V^T, with U S
    replaced by X V (equal for every thin SVD) and evaluated as X (V sym V^T):
    U is never formed and the [M, k] products are saved."""
    sym = _original_tall_sym(_original_k_transposed(s), v, dv)
    return 2.0 * tf.matmul(x, tf.matmul(v, tf.matmul(sym, v, transpose_b=True)))


def _broadening(s):
    """Squared widths for the Lorentzian guards: relative to the largest
    singular value and to the precision of the dtype."""
    tol = float(np.sqrt(np.finfo(s.dtype.as_numpy_dtype).eps))
    tiny = float(np.finfo(s.dtype.as_numpy_dtype).tiny)
    s_max = tf.reduce_max(s, axis=-1, keepdims=True)
    eps_gap = tf.maximum(tf.square(tol * tf.square(s_max)), tiny)
    eps_inv = tf.maximum(tf.square(tol * s_max), tiny)
    return eps_gap[:, :, None], eps_inv


def _exact_gradient(s, u, v, ds, du, dv):
    """The true thin-SVD gradient (Townsend 2016, eq. 7-8), guarded.

    dX = U [(F o (U^T dU - dU^T U)) S + diag(ds) + S (F o (V^T dV - dV^T V))] V^T
         + (I - U U^T) dU S^-1 V^T + U S^-1 dV^T (I - V V^T),
    with F[i, j] = 1/(s_j^2 - s_i^2) replaced by g/(g^2 + eps) and 1/s by
    s/(s^2 + eps), which equal the exact values away from degeneracy.
    """
    eps_gap, eps_inv = _broadening(s)
    s2 = tf.square(s)
    gap = s2[:, None, :] - s2[:, :, None]
    f = gap / (tf.square(gap) + eps_gap)
    s_inv = s / (s2 + eps_inv)
    utdu = tf.matmul(u, du, transpose_a=True)
    vtdv = tf.matmul(v, dv, transpose_a=True)
    core = (
        (f * (utdu - _transpose(utdu))) * s[:, None, :]
        + tf.linalg.diag(ds)
        + s[:, :, None] * (f * (vtdv - _transpose(vtdv)))
    )
    grad = tf.matmul(u, tf.matmul(core, v, transpose_b=True))
    du_perp = du - tf.matmul(u, utdu)
    grad += tf.matmul(du_perp * s_inv[:, None, :], v, transpose_b=True)
    dv_perp = dv - tf.matmul(v, vtdv)
    grad += tf.matmul(u * s_inv[:, None, :], dv_perp, transpose_b=True)
    return grad


def _zero_nonfinite_samples(x):
    """Zero every sample of x holding any non-finite entry (the 2018 release's guard)."""
    finite = tf.math.is_finite(x)
    sample_finite = tf.reduce_all(finite, axis=list(range(1, x.shape.rank)), keepdims=True)
    return tf.where(finite & sample_finite, x, tf.zeros_like(x))


def _eccv_gradient(s, u, v, ds, du, dv):
    """dL/dX by the 2018 release's formula (docs/method.md section 4); ds and dU are ignored.

    Only the first min(5, k) components take part; sym(A) = (A + A^T)/2.
    The K matrix is always zero (see the module docstring), so tall maps get
    a zero gradient and wide maps get U D^T - U diag(diag(D^T V)) V^T with
    D = dV diag(1/s).
    """
    del ds, du
    k = min(_ECCV_MAX_COMPONENTS, s.shape[-1])
    s, u, v, dv = s[:, :k], u[:, :, :k], v[:, :, :k], dv[:, :, :k]
    s2 = tf.square(s)
    k_matrix = _zero_nonfinite_samples(1.0 / (s2[:, :, None] - s2[:, None, :]))
    k_matrix = tf.linalg.set_diag(k_matrix, tf.zeros_like(s))
    if u.shape[-2] < v.shape[-2]:
        scaled = dv / s[:, None, :]
        v_scaled = v * s[:, None, :]
        inner = k_matrix * tf.matmul(v_scaled, scaled, transpose_a=True)
        sym = 0.5 * (inner + _transpose(inner))
        diag_term = tf.linalg.diag(tf.linalg.diag_part(tf.matmul(scaled, v, transpose_a=True)))
        grad = (
            tf.matmul(u, scaled, transpose_b=True)
            - tf.matmul(tf.matmul(u, diag_term), v, transpose_b=True)
            - 2.0 * tf.matmul(tf.matmul(u, sym), v_scaled, transpose_b=True)
        )
    else:
        inner = _transpose(k_matrix) * tf.matmul(v, dv, transpose_a=True)
        sym = 0.5 * (inner + _transpose(inner))
        grad = 2.0 * tf.matmul(u * s[:, None, :], tf.matmul(sym, v, transpose_b=True))
    return _zero_nonfinite_samples(grad)


_GRADIENT_FNS = {
    "original": _original_gradient,
    "exact": _exact_gradient,
    "eccv": _eccv_gradient,
}


def _check_gradient(gradient):
    if gradient not in _GRADIENT_FNS:
        raise UserError(f"unknown SVD gradient {gradient!r}; choose one of: {', '.join(GRADIENTS)}")
    return _GRADIENT_FNS[gradient]


def check_backend(backend):
    """Raise a UserError naming the choices unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown SVD backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def _check_matrices(x):
    if x.shape.rank != 3 or x.shape[-2] is None or x.shape[-1] is None:
        raise ValueError(f"expected a batch of matrices [B, M, N] with static M and N, got shape {x.shape}")


def _decompose_with_gradient(x, decompose, gradient):
    """Run `decompose(x) -> (s, u, v)` and give it the chosen SVD backward formula:
    a name of GRADIENTS, or a function (s, u, v, ds, du, dv) -> dx."""
    _check_matrices(x)
    gradient_fn = gradient if callable(gradient) else _check_gradient(gradient)

    @tf.custom_gradient
    def decomposition(x):
        s, u, v = decompose(x)

        def backward(ds, du, dv):
            return gradient_fn(
                s, u, v, _zeros_if_none(ds, s), _zeros_if_none(du, u), _zeros_if_none(dv, v)
            )

        return (s, u, v), backward

    return decomposition(x)


def _thin_svd(x):
    return tf.linalg.svd(x, full_matrices=False)


def svd(x, gradient="original"):
    """Thin SVD of x [B, M, N] by `tf.linalg.svd`, returning (s, u, v).

    Uses TensorFlow's sign convention, which the loss depends on (docs/method.md section 1).
    `gradient` is one of GRADIENTS (see the module docstring).
    """
    return _decompose_with_gradient(x, _thin_svd, gradient)


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
        v = _finite_or_zero(v / s[:, None, :])
        return s, u, v
    _, v = tf.linalg.eigh(tf.matmul(x, x, transpose_a=True))
    v = tf.reverse(v, axis=[-1])
    u = tf.matmul(x, v)
    s = tf.norm(u, axis=1)
    u = _finite_or_zero(u / s[:, None, :])
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
    large = _finite_or_zero(large / tf.norm(large, axis=-2, keepdims=True))
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
    `_original_tall_gradient_from_x`), so a map whose U nobody reads (the teacher's,
    and the student's in KD-SVD) costs one Gram product, one eigh and, with a
    gradient, one more product of X's size.
    """
    _check_matrices(x)
    if gradient != "original" or x.shape[-2] < x.shape[-1]:
        return _decompose_with_gradient(x, _gram_eigh_decomposition, gradient)

    def original_tall(s, u, v, ds, du, dv):
        del u, ds, du
        return _original_tall_gradient_from_x(x, s, v, dv)

    return _decompose_with_gradient(x, _gram_eigh_decomposition, original_tall)


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
    _check_matrices(x)
    check_backend(backend)
    plain = svd if backend == "linalg_svd" else gram_svd
    if in_square_band(x):
        if gradient == "original":
            return plain(tf.stop_gradient(x), gradient)
        return plain(x, gradient)
    if backend == "gram":
        return gram_svd(x, gradient)
    return _decompose_with_gradient(x, _gram_decomposition, gradient)
