"""Decompositions of batched feature matrices and their gradients (docs/method.md sections
2-4): one entry, `decompose`, owns every backend.

A feature map [B, H, W, D] is read as a batch of matrices X [B, M, N] with M = H*W and
N = D. Every decomposition returns `(s, u, v)` with s [B, k], u [B, M, k], v [B, N, k],
k = min(M, N) (or the first `components`), singular values descending, and attaches one of
the backward formulas of `GRADIENTS` (gradients.py).

Routes: "svd" (the thin SVD) or "eid" (KD-EID's, from the Gram matrix of the smaller side:
dense.eid). Backends (`BACKENDS`), the same gradient formulas in all:
- "linalg_svd": `tf.linalg.svd` (KD-EID: its own Gram route). Faithful.
- "gram": `dense.gram_svd`, the eigendecomposition of the smaller Gram matrix: several
  times faster on CPU, with a fixed sign rule of its own (`dense.column_signs`).
- "hybrid": "linalg_svd" where the caller's loss depends on the signs (`signs_matter`),
  "gram" elsewhere: the faithful loss at part of the cost.
- "batched": batched dense operations only, the first `components` (batched.py): the GPU
  route, "gram"'s signs.
Placement: `placement.decomposition_device` (the host CPU when the step runs on an
accelerator, as the authors).
"""
from sskd_tf.errors import UserError
from sskd_tf.linalg import batched, dense
from sskd_tf.linalg.dense import column_signs, eid, gram_svd, in_square_band, svd
from sskd_tf.linalg.gradients import GRADIENTS, finite_or_zero
from sskd_tf.linalg.placement import DECOMPOSITION_DEVICES, decomposition_device, placed

BACKENDS = ("linalg_svd", "gram", "hybrid", "batched")
ROUTES = ("svd", "eid")

__all__ = ["BACKENDS", "DECOMPOSITION_DEVICES", "GRADIENTS", "ROUTES", "check_backend",
           "column_signs", "decompose", "decomposition_device", "eid", "finite_or_zero",
           "gram_svd", "in_square_band", "svd"]


def check_backend(backend):
    """Raise a UserError naming the choices unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown SVD backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def decompose(x, route="svd", gradient="original", backend="linalg_svd", components=None,
              signs_matter=True, device=None):
    """(s, u, v) of x [B, M, N] by `route` and `backend`, with the backward formula
    `gradient` (one of GRADIENTS), its forward operations requested on `device` (None:
    where the step runs; see `decomposition_device`). components: the leading components
    the caller keeps (the "batched" backend computes only those; the others all).
    signs_matter: whether the caller's loss depends on these vectors' signs ("hybrid"
    takes `tf.linalg.svd`'s then)."""
    check_backend(backend)
    if route not in ROUTES:
        raise ValueError(f"unknown decomposition route {route!r}; choose one of: {ROUTES}")
    if backend == "hybrid":
        backend = "linalg_svd" if signs_matter else "gram"

    def run(matrices):
        if backend == "batched":
            route_of = batched.batched_eid if route == "eid" else batched.batched_svd
            return route_of(matrices, gradient, components)
        if route == "eid":
            return dense.eid(matrices, gradient, backend)
        return (dense.gram_svd if backend == "gram" else dense.svd)(matrices, gradient)

    return placed(run, device)(x)
