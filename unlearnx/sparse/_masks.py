"""Exact top-k masks: magnitude pruning (global or per tensor) and per-tensor drop-and-grow.

Every mask keeps an exact number of entries: ties are broken by position (lower flat index first), so the
count never depends on how many weights share a magnitude. The k-th largest score is found by a bisection
on the scores' bit patterns, linear in the tensor size (see :mod:`unlearnx.sparse._select`), with the same
result as a stable sort.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree
from unlearnx.sparse import _select

__all__ = ["drop_and_grow", "keep_top", "magnitude_masks", "prune_globally"]


def keep_top(scores: jax.Array, count) -> jax.Array:
    """A bool mask of ``scores``' shape keeping the ``count`` largest entries (ties: lower index first).

    ``count`` is step-dependent data and may be traced; a concrete count must be a non-negative integer
    (``ValueError`` otherwise). A count above ``scores.size`` keeps every entry. NaN ranks below −inf and
    −0 ties with +0, as in a sort. Cost: about 32 linear passes over the scores (a further ~log₂ N when
    the count-th largest value is tied), not a sort.

    Args:
        scores: real scores, any shape.
        count: how many entries to keep (an int, or a traced int32).

    Returns:
        A bool array of ``scores``' shape with exactly ``min(count, scores.size)`` True entries.

    Raises:
        ValueError: a concrete ``count`` that is not a non-negative integer.
        TypeError: non-real scores.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import sparse
        >>> sparse.keep_top(jnp.asarray([1.0, 2.0, 2.0, 2.0]), 2).tolist()  # ties: lower index first
        [False, True, True, False]
    """
    dtype = jnp.result_type(scores)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"scores must be real numbers, got dtype {dtype}")
    if not checks.is_traced(count):
        count = min(checks.static_int("count", count, low=0), int(np.size(scores)))
    return _select.top_flat(jnp.asarray(scores), count).reshape(np.shape(scores))


def _kept_count(size: int, sparsity) -> jax.Array:
    """round((1 − s)·N): in Python for a concrete s, in float32 (float64 with x64) for a traced one."""
    if not checks.is_traced(sparsity):
        return jnp.asarray(round((1.0 - float(sparsity)) * size), jnp.int32)
    return jnp.round((1.0 - jnp.asarray(sparsity, jnp.result_type(float))) * size).astype(jnp.int32)


def _check_same_paths(weights: dict, masks: dict) -> None:
    if set(weights) != set(masks):
        raise ValueError(
            f"weights and masks must have the same paths: weights only {sorted(set(weights) - set(masks))}, "
            f"masks only {sorted(set(masks) - set(weights))}"
        )


def _prune_to_count(weights: dict[str, jax.Array], masks: dict[str, jax.Array], kept) -> dict[str, jax.Array]:
    """:func:`prune_globally` keeping ``kept`` entries (an int32, possibly traced)."""
    paths = sorted(weights)
    keys = jnp.concatenate(
        [
            _select.order_keys(jnp.where(masks[p], jnp.abs(weights[p]).astype(jnp.float32), -1.0))
            for p in paths
        ]
    )
    flat = _select.top_from_keys(keys, kept)
    out, start = {}, 0
    for p in paths:
        size = int(np.size(weights[p]))
        out[p] = flat[start : start + size].reshape(np.shape(weights[p]))
        start += size
    return out


def prune_globally(
    weights: dict[str, jax.Array], masks: dict[str, jax.Array], sparsity
) -> dict[str, jax.Array]:
    """Global magnitude pruning over flat ``{path: tensor}`` dicts: keeps round((1 − s)·N) entries with the
    largest raw ``|w|`` across all tensors, inactive entries ranked below every active one (ties: the order of
    the sorted paths, then the flat index). ``sparsity`` may be traced (a schedule's value at a traced
    step); a concrete one must lie in [0, 1]. ``|w|`` is ranked in float32.

    Args:
        weights: ``{path: tensor}``.
        masks: ``{path: bool tensor}`` with the same paths and shapes (the currently active entries).
        sparsity: s, the fraction of all N entries to leave inactive.

    Returns:
        ``{path: bool tensor}`` masks with round((1 − s)·N) True entries in all.

    Raises:
        ValueError: different paths in ``weights`` and ``masks``, or a concrete ``sparsity`` outside [0, 1].

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import sparse
        >>> weights = {"a": jnp.asarray([3.0, -1.0]), "b": jnp.asarray([2.0, 0.5])}
        >>> masks = {"a": jnp.asarray([True, True]), "b": jnp.asarray([True, True])}
        >>> {k: v.tolist() for k, v in sparse.prune_globally(weights, masks, 0.5).items()}
        {'a': [True, False], 'b': [True, False]}
    """
    _check_same_paths(weights, masks)
    if not checks.is_traced(sparsity):
        checks.static_number("sparsity", sparsity, low=0.0, high=1.0)
    size = sum(int(np.size(w)) for w in weights.values())
    return _prune_to_count(weights, masks, _kept_count(size, sparsity))


def drop_count(fraction, active) -> jax.Array:
    """⌈p·n⌉ as Python's ``math.ceil(p * n)`` gives it in float64, exactly, without float64 on the device.

    ``fraction`` is a Python float, a traced float scalar, or an exact ``(limbs, shift)`` pair from
    :func:`unlearnx.sparse._select.fraction_table`; ``active`` int32 counts (any shape).
    """
    if isinstance(fraction, tuple):
        return _select.ceil_times(*fraction, active)
    return _select.ceil_fraction_times(fraction, active)


def _drop_and_grow(weights: dict, masks: dict, grow_scores: dict, fraction) -> dict[str, jax.Array]:
    """:func:`drop_and_grow` on every tensor of flat ``{path: tensor}`` dicts, in two shared selections."""
    paths = list(weights)
    active = jnp.stack([_select.count(jnp.ravel(masks[p])) for p in paths])
    drop = jnp.minimum(drop_count(fraction, active), active)
    kept = _select.top_many(
        [
            _select.order_keys(jnp.where(masks[p], jnp.abs(weights[p]).astype(jnp.float32), -1.0))
            for p in paths
        ],
        active - drop,
    )
    grown = _select.top_many(
        [
            _select.order_keys(jnp.where(k, -jnp.inf, jnp.ravel(grow_scores[p]).astype(jnp.float32)))
            for p, k in zip(paths, kept, strict=True)
        ],
        drop,
    )
    return {p: (k | g).reshape(masks[p].shape) for p, k, g in zip(paths, kept, grown, strict=True)}


def drop_and_grow(weights: jax.Array, mask: jax.Array, grow_scores: jax.Array, fraction) -> jax.Array:
    """One tensor's neuroregeneration at constant density.

    With n active entries, drops r = ⌈fraction·n⌉ more of them (smallest ``|w|`` first; inactive entries rank
    lowest), then activates exactly r of the entries not kept (just-dropped ones included) with the largest
    ``grow_scores``. The active count stays n. r is what Python's ``math.ceil(fraction * n)`` gives in
    float64, computed exactly (no float32 rounding, even for layers of millions of weights). ``fraction``
    may be traced (a schedule's value at a traced step); a concrete one must lie in [0, 1]. ``|w|`` and the
    scores are ranked in float32.

    Args:
        weights: the tensor.
        mask: its 0/1 or bool mask of active entries (same shape).
        grow_scores: the regrowth scores (same shape; GraNet and RigL use ``|∇L|``).
        fraction: the drop fraction p ∈ [0, 1].

    Returns:
        The new bool mask, with as many active entries as ``mask``.

    Raises:
        ValueError: different shapes, a mask that is not 0/1, or a concrete ``fraction`` outside [0, 1].

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import sparse
        >>> weights = jnp.asarray([5.0, 4.0, -3.0, 2.0, 1.0, 0.0, 0.0, 0.0])
        >>> mask = weights != 0
        >>> scores = jnp.asarray([0.0, 0.0, 0.0, 0.5, 0.1, 0.9, 0.2, 0.3])
        >>> # n = 5, r = ⌈0.4·5⌉ = 2: drop |w| = 2 and 1, regrow the best scores among the rest (5 and 3).
        >>> sparse.drop_and_grow(weights, mask, scores, 0.4).astype(int).tolist()
        [1, 1, 1, 1, 0, 1, 0, 0]
    """
    if not (jnp.shape(weights) == jnp.shape(mask) == jnp.shape(grow_scores)):
        raise ValueError(
            f"weights {jnp.shape(weights)}, mask {jnp.shape(mask)} and grow_scores {jnp.shape(grow_scores)} "
            "must have one shape"
        )
    if not checks.is_traced(fraction):
        fraction = checks.static_number("fraction", fraction, low=0.0, high=1.0)
    checks.check_binary("mask", mask)
    one = {"": jnp.asarray(weights)}, {"": jnp.asarray(mask).astype(bool)}, {"": jnp.asarray(grow_scores)}
    return _drop_and_grow(*one, fraction)[""]


def magnitude_masks(
    params: PyTree,
    sparsity: float | PyTree,
    *,
    scope: Literal["global", "layer"] = "global",
    where: tree_lib.Where = None,
) -> PyTree:
    """Bool masks with params' structure keeping the largest-``|w|`` entries of the selected tensors.

    Args:
        params: parameter tree.
        sparsity: a float s ∈ [0, 1); with ``scope="layer"`` also a tree of per-tensor sparsities (e.g. from
            :func:`unlearnx.sparse.erk_sparsities`; ``None`` keeps a tensor dense).
        scope: ``"global"`` ranks raw ``|w|`` across all selected tensors together (as GraNet) and keeps
            round((1 − s)·N); ``"layer"`` keeps round((1 − s_l)·N_l) in each tensor.
        where: selector (default: every tensor of rank ≥ 2).

    Returns:
        Bool arrays with each parameter's shape; unselected tensors are all True.

    Raises:
        ValueError: an unknown scope, a sparsity outside [0, 1) (naming the tensor), a sparsity tree with
            paths that ``params`` lacks, a selector matching nothing.
        TypeError: a traced sparsity (static), or a tree of sparsities with ``scope="global"``.

    Examples:
        >>> import numpy as np
        >>> params = {"bias": np.ones(2), "kernel": np.array([[0.1, -0.5], [0.3, 0.05]])}
        >>> masks = magnitude_masks(params, 0.5)  # the two largest |w| of the kernel; the bias stays dense
        >>> masks["kernel"].tolist(), masks["bias"].tolist()
        ([[False, True], [True, False]], [True, True])
    """
    from unlearnx.sparse._distributions import _check_sparsity, _selected_paths

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
            p: keep_top(jnp.abs(w).astype(jnp.float32), round((1.0 - per_tensor[p]) * w.size))
            for p, w in weights.items()
        }
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: kept.get(tree_lib.key_path_str(path), jnp.ones(np.shape(leaf), bool)), params
    )
