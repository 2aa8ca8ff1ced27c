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

The names of the choices (`BACKENDS`, `GRADIENTS`, `ROUTES`, `DECOMPOSITION_DEVICES`) are
defined here and importing the package alone does not import TensorFlow, so that the
command line's declarations read them (distill/catalog.py); the functions load on first
use.
"""
import importlib

BACKENDS = ("linalg_svd", "gram", "hybrid", "batched")
GRADIENTS = ("original", "exact", "eccv")
ROUTES = ("svd", "eid")
DECOMPOSITION_DEVICES = ("auto", "cpu", "accelerator")

# Attribute -> the submodule that defines it.
_FUNCTIONS = {
    "check_backend": "dispatch", "decompose": "dispatch",
    "column_signs": "dense", "eid": "dense", "gram_svd": "dense", "in_square_band": "dense",
    "svd": "dense", "finite_or_zero": "gradients", "decomposition_device": "placement",
    "placed": "placement",
}

__all__ = ["BACKENDS", "DECOMPOSITION_DEVICES", "GRADIENTS", "ROUTES", *sorted(_FUNCTIONS)]


def __getattr__(attribute):
    if attribute not in _FUNCTIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[attribute]}"), attribute)
