"""The backward formulas of the decompositions (docs/method.md sections 3 and 4), and the
custom gradient that attaches one of them to a decomposition's (s, u, v) (`GRADIENTS`):

- "original": the authors' hand-written gradient (KD_methods_with_TF `nets/SVP.py`).
  Faithful default. It ignores ds; the tall branch (N <= M) ignores dU and equals
  exactly twice the true gradient of a loss on V; the wide branch (N > M) is not
  proportional to the true gradient.
- "exact": the true gradient of the thin SVD (Townsend 2016, "Differentiating the
  Singular Value Decomposition"), with Lorentzian broadening of the 1/(s_j^2 - s_i^2)
  factors and of 1/s so that it stays finite when singular values repeat or vanish.
- "eccv": the gradient of the 2018 release (SSKD_SVD `nets/Distillation.py`). Its
  1/(s_i^2 - s_j^2) matrix passes through a per-sample guard that zeroes the sample when
  any entry is non-finite; the diagonal is always 1/0, so that matrix is zero for every
  sample and only wide (M < N) maps get a gradient.
"""
import numpy as np
import tensorflow as tf

from sskd_tf.errors import UserError
from sskd_tf.linalg import GRADIENTS

# The authors' wide-branch guard on 1/s.
ORIGINAL_INV_EPS = 1e-8
# The 2018 release differentiates through at most this many components.
_ECCV_MAX_COMPONENTS = 5


def finite_or_zero(x):
    return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))


def transpose(x):
    return tf.linalg.matrix_transpose(x)


def zeros_if_none(grad, like):
    return tf.zeros_like(like) if grad is None else grad


def original_gradient(s, u, v, ds, du, dv):
    """dL/dX by the authors' formula (docs/method.md section 3); ds is ignored.

    K[i, j] = 1/(s_i^2 - s_j^2) off the diagonal, sym(A) = A + A^T.
    Tall (N <= M): dX = 2 U S sym(K^T o (V^T dV)) V^T (dU ignored).
    Wide (N > M): the same derivation with the roles of U and V swapped, which
    uses dV / (s + 1e-8) and a first-order correction; it differs from the
    true gradient (kept: faithful mode).
    """
    del ds
    k_transposed = original_k_transposed(s)
    if v.shape[-2] <= u.shape[-2]:
        sym = original_tall_sym(k_transposed, v, dv)
        return 2.0 * tf.matmul(u * s[:, None, :], tf.matmul(sym, v, transpose_b=True))
    # Wide: swap the roles of the two sides; dU of the original problem is unused.
    left, right, d_left = v, u, dv
    scaled = d_left / (s[:, None, :] + ORIGINAL_INV_EPS)
    diag_term = tf.linalg.diag(tf.linalg.diag_part(tf.matmul(left, scaled, transpose_a=True)))
    inner = k_transposed * tf.matmul(scaled, left * s[:, None, :], transpose_a=True)
    sym = inner + transpose(inner)
    correction = diag_term + 2.0 * s[:, :, None] * sym
    grad_t = tf.matmul(scaled - tf.matmul(left, correction), right, transpose_b=True)
    return transpose(grad_t)


def original_k_transposed(s):
    """K^T of the authors' gradient: K[i, j] = 1/(s_i^2 - s_j^2) off the diagonal,
    0 on it, non-finite entries 0."""
    k = s.shape[-1]
    eye = tf.eye(k, dtype=s.dtype)
    s2 = tf.square(s)
    k_matrix = (1.0 - eye) / (s2[:, :, None] - s2[:, None, :] + eye)
    return finite_or_zero(transpose(k_matrix))


def original_tall_sym(k_transposed, v, dv):
    """sym(K^T o (V^T dV)) of the authors' tall branch, sym(A) = A + A^T."""
    inner = k_transposed * tf.matmul(v, dv, transpose_a=True)
    return inner + transpose(inner)


def original_tall_gradient_from_x(x, s, v, dv):
    """The authors' tall-branch gradient 2 U S sym(K^T o (V^T dV)) V^T, with U S
    replaced by X V (equal for every thin SVD) and evaluated as X (V sym V^T):
    U is never formed and the [M, k] products are saved."""
    sym = original_tall_sym(original_k_transposed(s), v, dv)
    return 2.0 * tf.matmul(x, tf.matmul(v, tf.matmul(sym, v, transpose_b=True)))


def broadening(s):
    """Squared widths for the Lorentzian guards: relative to the largest
    singular value and to the precision of the dtype."""
    tol = float(np.sqrt(np.finfo(s.dtype.as_numpy_dtype).eps))
    tiny = float(np.finfo(s.dtype.as_numpy_dtype).tiny)
    s_max = tf.reduce_max(s, axis=-1, keepdims=True)
    eps_gap = tf.maximum(tf.square(tol * tf.square(s_max)), tiny)
    eps_inv = tf.maximum(tf.square(tol * s_max), tiny)
    return eps_gap[:, :, None], eps_inv


def exact_gradient(s, u, v, ds, du, dv):
    """The true thin-SVD gradient (Townsend 2016, eq. 7-8), guarded.

    dX = U [(F o (U^T dU - dU^T U)) S + diag(ds) + S (F o (V^T dV - dV^T V))] V^T
         + (I - U U^T) dU S^-1 V^T + U S^-1 dV^T (I - V V^T),
    with F[i, j] = 1/(s_j^2 - s_i^2) replaced by g/(g^2 + eps) and 1/s by
    s/(s^2 + eps), which equal the exact values away from degeneracy.
    """
    eps_gap, eps_inv = broadening(s)
    s2 = tf.square(s)
    gap = s2[:, None, :] - s2[:, :, None]
    f = gap / (tf.square(gap) + eps_gap)
    s_inv = s / (s2 + eps_inv)
    utdu = tf.matmul(u, du, transpose_a=True)
    vtdv = tf.matmul(v, dv, transpose_a=True)
    core = (
        (f * (utdu - transpose(utdu))) * s[:, None, :]
        + tf.linalg.diag(ds)
        + s[:, :, None] * (f * (vtdv - transpose(vtdv)))
    )
    grad = tf.matmul(u, tf.matmul(core, v, transpose_b=True))
    du_perp = du - tf.matmul(u, utdu)
    grad += tf.matmul(du_perp * s_inv[:, None, :], v, transpose_b=True)
    dv_perp = dv - tf.matmul(v, vtdv)
    grad += tf.matmul(u * s_inv[:, None, :], dv_perp, transpose_b=True)
    return grad


def zero_nonfinite_samples(x):
    """Zero every sample of x holding any non-finite entry (the 2018 release's guard)."""
    finite = tf.math.is_finite(x)
    sample_finite = tf.reduce_all(finite, axis=list(range(1, x.shape.rank)), keepdims=True)
    return tf.where(finite & sample_finite, x, tf.zeros_like(x))


def eccv_gradient(s, u, v, ds, du, dv):
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
    k_matrix = zero_nonfinite_samples(1.0 / (s2[:, :, None] - s2[:, None, :]))
    k_matrix = tf.linalg.set_diag(k_matrix, tf.zeros_like(s))
    if u.shape[-2] < v.shape[-2]:
        scaled = dv / s[:, None, :]
        v_scaled = v * s[:, None, :]
        inner = k_matrix * tf.matmul(v_scaled, scaled, transpose_a=True)
        sym = 0.5 * (inner + transpose(inner))
        diag_term = tf.linalg.diag(tf.linalg.diag_part(tf.matmul(scaled, v, transpose_a=True)))
        grad = (
            tf.matmul(u, scaled, transpose_b=True)
            - tf.matmul(tf.matmul(u, diag_term), v, transpose_b=True)
            - 2.0 * tf.matmul(tf.matmul(u, sym), v_scaled, transpose_b=True)
        )
    else:
        inner = transpose(k_matrix) * tf.matmul(v, dv, transpose_a=True)
        sym = 0.5 * (inner + transpose(inner))
        grad = 2.0 * tf.matmul(u * s[:, None, :], tf.matmul(sym, v, transpose_b=True))
    return zero_nonfinite_samples(grad)


GRADIENT_FNS = {
    "original": original_gradient,
    "exact": exact_gradient,
    "eccv": eccv_gradient,
}


def check_gradient(gradient):
    if gradient not in GRADIENT_FNS:
        raise UserError(f"unknown SVD gradient {gradient!r}; choose one of: {', '.join(GRADIENTS)}")
    return GRADIENT_FNS[gradient]


def check_matrices(x):
    if x.shape.rank != 3 or x.shape[-2] is None or x.shape[-1] is None:
        raise ValueError(f"expected a batch of matrices [B, M, N] with static M and N, got shape {x.shape}")


def decompose_with_gradient(x, decompose, gradient):
    """Run `decompose(x) -> (s, u, v)` and give it the chosen SVD backward formula:
    a name of GRADIENTS, or a function (s, u, v, ds, du, dv) -> dx."""
    check_matrices(x)
    gradient_fn = gradient if callable(gradient) else check_gradient(gradient)

    @tf.custom_gradient
    def decomposition(x):
        s, u, v = decompose(x)

        def backward(ds, du, dv):
            return gradient_fn(
                s, u, v, zeros_if_none(ds, s), zeros_if_none(du, u), zeros_if_none(dv, v)
            )

        return (s, u, v), backward

    return decomposition(x)
