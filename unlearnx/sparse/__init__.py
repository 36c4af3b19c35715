"""Sparse training: sparsity distributions, schedules, exact top-k masks and masked optax transforms
(GraNet, GMP, RigL, SET, static)."""

from unlearnx.sparse.distributions import erk_sparsities, uniform_sparsities
from unlearnx.sparse.masks import drop_and_grow, keep_top, magnitude_masks, prune_globally
from unlearnx.sparse.schedules import cosine_drop_fraction, cubic_sparsity
from unlearnx.sparse.transforms import (
    MOMENTUM_POLICIES,
    SparseState,
    gmp,
    granet,
    masks,
    rigl,
    set_sparse,
    static_sparse,
)

__all__ = [
    "MOMENTUM_POLICIES",
    "SparseState",
    "cosine_drop_fraction",
    "cubic_sparsity",
    "drop_and_grow",
    "erk_sparsities",
    "gmp",
    "granet",
    "keep_top",
    "magnitude_masks",
    "masks",
    "prune_globally",
    "rigl",
    "set_sparse",
    "static_sparse",
    "uniform_sparsities",
]
