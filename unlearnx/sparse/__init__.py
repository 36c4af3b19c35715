"""Sparse training: sparsity distributions, schedules, exact top-k masks and masked optax transforms
(GraNet, GMP, RigL, SET, static)."""

from unlearnx.sparse._baselines import gmp, rigl, set_sparse, static_sparse
from unlearnx.sparse._branching import branch_on_mask_update
from unlearnx.sparse._distributions import erk_sparsities, uniform_sparsities
from unlearnx.sparse._masks import drop_and_grow, keep_top, magnitude_masks, prune_globally
from unlearnx.sparse._schedules import cosine_drop_fraction, cubic_sparsity
from unlearnx.sparse._transforms import MOMENTUM_POLICIES, SparseState, granet, masks

__all__ = [
    "MOMENTUM_POLICIES",
    "SparseState",
    "branch_on_mask_update",
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
