"""Exact top-k masks: magnitude pruning (global or per tensor) and per-tensor drop-and-grow.

Every mask keeps an exact number of entries: ties are broken by position (lower flat index first), so the
count never depends on how many weights share a magnitude.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib

PyTree = Any

__all__ = ["drop_and_grow", "keep_top", "magnitude_masks", "prune_globally"]


def keep_top(scores: jax.Array, count) -> jax.Array:
    """A bool mask of ``scores``' shape keeping the ``count`` largest entries (ties: lower index first).

    ``count`` is step-dependent data and may be traced; a concrete count must be a non-negative integer
    (``ValueError`` otherwise). A count above ``scores.size`` keeps every entry.
    """
    dtype = jnp.result_type(scores)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"scores must be real numbers, got dtype {dtype}")
    if not checks.is_traced(count):
        count = min(checks.static_int("count", count, low=0), int(np.size(scores)))
    flat = jnp.ravel(scores)
    order = jnp.argsort(-flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks < count).reshape(scores.shape)


def _kept_count(size: int, sparsity) -> jax.Array:
    return jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * size).astype(jnp.int32)


def prune_globally(
    weights: dict[str, jax.Array], masks: dict[str, jax.Array], sparsity
) -> dict[str, jax.Array]:
    """Global magnitude pruning over flat ``{path: tensor}`` dicts: keeps round((1 − s)·N) entries with the
    largest raw |w| across all tensors, inactive entries ranked below every active one. ``sparsity`` may be
    traced (a schedule's value at a traced step); a concrete one must lie in [0, 1]."""
    if set(weights) != set(masks):
        raise ValueError(
            f"weights and masks must have the same paths: weights only {sorted(set(weights) - set(masks))}, "
            f"masks only {sorted(set(masks) - set(weights))}"
        )
    if not checks.is_traced(sparsity):
        checks.static_number("sparsity", sparsity, low=0.0, high=1.0)
    paths = sorted(weights)
    scores = jnp.concatenate(
        [jnp.where(masks[p], jnp.abs(weights[p]), -1.0).ravel().astype(jnp.float32) for p in paths]
    )
    kept = keep_top(scores, _kept_count(scores.size, sparsity))
    out, start = {}, 0
    for p in paths:
        size = weights[p].size
        out[p] = kept[start : start + size].reshape(weights[p].shape)
        start += size
    return out


def drop_and_grow(weights: jax.Array, mask: jax.Array, grow_scores: jax.Array, fraction) -> jax.Array:
    """One tensor's neuroregeneration at constant density.

    With n active entries, drops r = ⌈fraction·n⌉ more of them (smallest |w| first; inactive entries rank
    lowest), then activates exactly r of the entries not kept (just-dropped ones included) with the largest
    ``grow_scores``. The active count stays n. ``fraction`` may be traced (a schedule's value at a traced
    step); a concrete one must lie in [0, 1].
    """
    if not (jnp.shape(weights) == jnp.shape(mask) == jnp.shape(grow_scores)):
        raise ValueError(
            f"weights {jnp.shape(weights)}, mask {jnp.shape(mask)} and grow_scores {jnp.shape(grow_scores)} "
            "must have one shape"
        )
    if not checks.is_traced(fraction):
        checks.static_number("fraction", fraction, low=0.0, high=1.0)
    checks.check_binary("mask", mask)
    active = jnp.sum(mask.astype(jnp.int32))
    drop = jnp.ceil(jnp.asarray(fraction, jnp.float32) * active).astype(jnp.int32)
    kept = keep_top(jnp.where(mask, jnp.abs(weights).astype(jnp.float32), -1.0), active - drop)
    grown = keep_top(jnp.where(kept, -jnp.inf, grow_scores.astype(jnp.float32)), drop)
    return kept | grown


def magnitude_masks(
    params: PyTree,
    sparsity: float | PyTree,
    *,
    scope: Literal["global", "layer"] = "global",
    where: tree_lib.Where = None,
) -> PyTree:
    """Bool masks with params' structure keeping the largest-|w| entries of the selected tensors.

    Args:
      params: parameter tree.
      sparsity: a float s ∈ [0, 1); with ``scope="layer"`` also a tree of per-tensor sparsities (e.g. from
        :func:`unlearnx.sparse.erk_sparsities`; ``None`` keeps a tensor dense).
      scope: ``"global"`` ranks raw |w| across all selected tensors together (as GraNet) and keeps
        round((1 − s)·N); ``"layer"`` keeps round((1 − s_l)·N_l) in each tensor.
      where: selector (default: every tensor of rank ≥ 2).

    Returns:
      Bool arrays with each parameter's shape; unselected tensors are all True.

    Raises:
      ValueError: an unknown scope, a sparsity outside [0, 1) (naming the tensor), a sparsity tree with paths
        that ``params`` lacks, a selector matching nothing.
      TypeError: a traced sparsity (static), or a tree of sparsities with ``scope="global"``.
    """
    from unlearnx.sparse.distributions import _check_sparsity, _selected_paths

    checks.choice("scope", scope, ("global", "layer"))
    selected = _selected_paths(params, where)
    flat = dict(tree_lib.leaves_with_paths(params))
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(sparsity)) and sparsity is not None:
        _check_sparsity(sparsity)
        per_tensor = {p: float(sparsity) for p in selected}
    elif scope == "layer":
        given = dict(tree_lib.leaves_with_paths(sparsity))
        unknown = sorted(set(given) - set(flat))
        if unknown:
            raise ValueError(f"sparsity has paths that params lacks: {unknown[:3]}")
        per_tensor = {p: s for p, s in given.items() if p in selected}
        for path, value in per_tensor.items():
            _check_sparsity(value, f"sparsity[{path!r}]")
    else:
        raise TypeError("scope='global' takes one float sparsity")
    weights = {p: jnp.asarray(flat[p]) for p in per_tensor}
    if scope == "global":
        everything = {p: jnp.ones(w.shape, bool) for p, w in weights.items()}
        kept = prune_globally(weights, everything, next(iter(per_tensor.values())))
    else:
        kept = {
            p: keep_top(jnp.abs(w).astype(jnp.float32), _kept_count(w.size, per_tensor[p]))
            for p, w in weights.items()
        }
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: kept.get(tree_lib.key_path_str(path), jnp.ones(np.shape(leaf), bool)), params
    )
