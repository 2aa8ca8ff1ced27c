"""The one entry to the decompositions: `decompose` by route and backend (see the
package's docstring)."""
from sskd_tf.errors import UserError
from sskd_tf.linalg import BACKENDS, ROUTES, batched, dense
from sskd_tf.linalg.placement import placed


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
