"""Sparse training as optax transforms: GraNet and the baselines it is measured against.

Each transform wraps an inner optimizer and keeps masks, the step count and the inner state in a
:class:`SparseState`. One ``update`` does, in GraNet's order (step t counts optimizer steps, from 1):

1. the inner optimizer step, θ' = θ + u;
2. re-masking of the weights, θ' ← θ' ⊙ m (and of the momentum, by ``momentum_policy``);
3. on mask-update steps (t mod ΔT = 0 in the algorithm's window, gated with ``lax.cond``): global
   magnitude pruning to the schedule's sparsity, then per-tensor drop-and-grow: drop ⌈p_t·n_l⌉ more of
   the smallest |θ'|, regrow as many inactive entries with the largest score (|∇L| for GraNet and RigL —
   the dense gradient, since parameters are stored masked; uniform noise for SET);
4. the returned update is θ' ⊙ m_new − θ, so after ``optax.apply_updates`` every inactive parameter is
   exactly 0. Regrown weights start from their current value (0 unless dropped in the same event).

The default selector sparsifies every tensor of rank ≥ 2 (kernels), as GraNet does on CIFAR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx.sparse import distributions, schedules
from unlearnx.sparse.masks import drop_and_grow, keep_top, prune_globally

PyTree = Any
MOMENTUM_POLICIES = ("mask_every_step", "reset_regrown", "none")

__all__ = [
    "MOMENTUM_POLICIES",
    "SparseState",
    "gmp",
    "granet",
    "masks",
    "rigl",
    "set_sparse",
    "static_sparse",
]


class SparseState(NamedTuple):
    """``count``: optimizer steps taken; ``masks``: bool tree with params' structure (all True for dense
    tensors); ``inner_state``: the wrapped optimizer's state."""

    count: jax.Array
    masks: PyTree
    inner_state: optax.OptState


def masks(opt_state: optax.OptState) -> PyTree:
    """The current masks of the first (outermost) :class:`SparseState` inside ``opt_state``: alone, in an
    ``optax.chain`` or ``optax.named_chain``, or nested (found with ``optax.tree.get_all_with_path``)."""
    found = optax.tree.get_all_with_path(opt_state, "SparseState")
    if found:
        return found[0][1].masks
    raise ValueError("no SparseState (sparse training state) found in this optimizer state")


# ---------------------------------------------------------------------------------------------------------
# The shared machinery.


def _flat(tree: PyTree, paths) -> dict[str, jax.Array]:
    values = dict(tree_lib.leaves_with_paths(tree))
    return {p: values[p] for p in paths}


def _unflat(like: PyTree, values: dict[str, jax.Array], default: PyTree) -> PyTree:
    defaults = dict(tree_lib.leaves_with_paths(default))
    return jax.tree_util.tree_map_with_path(
        lambda path, _: values.get(tree_lib.key_path_str(path), defaults[tree_lib.key_path_str(path)]), like
    )


def _initial_masks(params: PyTree, sparsities: PyTree, seed: int) -> PyTree:
    """Random masks with exactly round((1 − s_l)·N_l) active entries per selected tensor."""
    per_tensor = {p: s for p, s in tree_lib.leaves_with_paths(sparsities) if s is not None}
    key = jax.random.key(seed)
    out = {}
    for index, (path, leaf) in enumerate(tree_lib.leaves_with_paths(params)):
        if path in per_tensor:
            scores = jax.random.uniform(jax.random.fold_in(key, index), np.shape(leaf))
            out[path] = keep_top(scores, round((1.0 - per_tensor[path]) * np.size(leaf)))
    dense = jax.tree.map(lambda leaf: jnp.ones(np.shape(leaf), bool), params)
    return _unflat(params, out, dense)


def _check_momentum_policy(inner: optax.GradientTransformation, params: PyTree, policy: str) -> None:
    checks.choice("momentum_policy", policy, MOMENTUM_POLICIES)
    if policy == "none":
        return
    state = jax.eval_shape(inner.init, params)
    found = []
    try:
        optax.tree_utils.tree_map_params(
            inner, lambda leaf: found.append(leaf) or leaf, state, transform_non_params=lambda leaf: leaf
        )
    except Exception as error:  # the inner init does not accept a parameter-shaped placeholder tree
        raise ValueError(
            f"momentum_policy={policy!r} cannot find the inner optimizer's per-parameter state ({error}); "
            "use momentum_policy='none' or an inner optimizer whose state mirrors the parameters"
        ) from error
    param_sizes = {int(np.size(leaf)) for leaf in jax.tree.leaves(params)} | {
        sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    }
    candidates = [
        leaf for leaf in jax.tree.leaves(state) if np.ndim(leaf) >= 1 and np.size(leaf) in param_sizes
    ]
    if len(candidates) > len(found):
        raise ValueError(
            f"momentum_policy={policy!r} cannot find the inner optimizer's per-parameter state: it holds "
            f"{len(candidates)} parameter-sized arrays outside a parameter-shaped tree (e.g. optax.flatten); "
            "use momentum_policy='none' or an inner optimizer whose state mirrors the parameters"
        )


def _mask_inner_state(inner, state, policy: str, old_masks: PyTree, new_masks: PyTree):
    if policy == "none":
        return state
    if policy == "mask_every_step":
        keep = new_masks
    else:  # reset_regrown: zero the state only where a weight has just become active
        keep = jax.tree.map(lambda old, new: old | ~new, old_masks, new_masks)
    return optax.tree_utils.tree_map_params(
        inner,
        lambda leaf, m: jnp.where(m, leaf, jnp.zeros_like(leaf)),
        state,
        keep,
        transform_non_params=lambda leaf: leaf,
    )


def _sparse_transform(
    inner: optax.GradientTransformation,
    *,
    initial_sparsities: Callable[[PyTree], PyTree],
    update_masks: Callable[..., dict[str, jax.Array]] | None,
    is_update_step: Callable[[jax.Array], jax.Array],
    where: tree_lib.Where,
    momentum_policy: str,
    seed: int,
) -> optax.GradientTransformationExtraArgs:
    """Builds a masked optimizer; ``update_masks(weights, masks, grads, step) -> masks`` acts on flat
    ``{path: array}`` dicts of the selected tensors and runs on steps where ``is_update_step(step)``."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        _check_momentum_policy(inner, params, momentum_policy)
        distributions._selected_paths(params, where)  # raises if nothing is selected
        return SparseState(
            jnp.zeros([], jnp.int32),
            _initial_masks(params, initial_sparsities(params), seed),
            inner.init(params),
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("sparse transforms need params: call update(grads, state, params)")
        tree_lib.check_same_structure(params, grads, names=("params", "grads"))
        tree_lib.check_same_structure(params, state.masks, names=("params", "state.masks"))
        updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        step = state.count + 1
        candidate = jax.tree.map(
            lambda p, u, m: jnp.where(m, p + u, jnp.zeros_like(p)), params, updates, state.masks
        )
        new_masks = state.masks
        if update_masks is not None:
            paths = list(distributions._selected_paths(params, where))

            def refresh(_):
                flat = update_masks(
                    _flat(candidate, paths), _flat(state.masks, paths), _flat(grads, paths), step
                )
                return _unflat(state.masks, flat, state.masks)

            new_masks = jax.lax.cond(is_update_step(step), refresh, lambda _: state.masks, None)
        new_params = jax.tree.map(lambda c, m: jnp.where(m, c, jnp.zeros_like(c)), candidate, new_masks)
        inner_state = _mask_inner_state(inner, inner_state, momentum_policy, state.masks, new_masks)
        final = jax.tree.map(lambda new, old: (new - old).astype(old.dtype), new_params, params)
        return final, SparseState(step, new_masks, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def _every(frequency: int, begin: int, end: int) -> Callable[[jax.Array], jax.Array]:
    return lambda step: (step % frequency == 0) & (step >= begin) & (step <= end)


def _check_window(begin_step: int, end_step: int, total_steps: int | None = None) -> None:
    checks.static_int("begin_step", begin_step, low=0, high=checks.INT32_MAX)
    checks.static_int("end_step", end_step, low=0, high=checks.INT32_MAX)
    if total_steps is not None:
        checks.static_int("total_steps", total_steps, low=1, high=checks.INT32_MAX)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be greater than begin_step ({begin_step})")
    if total_steps is not None and total_steps < end_step:
        raise ValueError(f"total_steps ({total_steps}) must be at least end_step ({end_step})")


def _cubic(initial: float, final: float, begin_step: int, end_step: int, frequency: int) -> Callable:
    """The validated Zhu–Gupta schedule ``step -> s(step)`` shared by GraNet and GMP."""
    distributions._check_sparsity(initial, "initial_sparsity")
    distributions._check_sparsity(final, "final_sparsity")
    kwargs = dict(initial=initial, final=final, begin_step=begin_step, end_step=end_step, frequency=frequency)
    schedules.cubic_sparsity(0, **kwargs)  # validates sparsities and the window now, not at trace time
    return lambda step: schedules.cubic_sparsity(step, **kwargs)


def _distribution(name: str) -> Callable[..., PyTree]:
    table = {"erk": distributions.erk_sparsities, "uniform": distributions.uniform_sparsities}
    return table[checks.choice("distribution", name, tuple(table))]


def _regrow_all(weights, masks_, scores, fraction) -> dict[str, jax.Array]:
    return {p: drop_and_grow(weights[p], masks_[p], scores[p], fraction) for p in weights}


# ---------------------------------------------------------------------------------------------------------
# The algorithms.


def granet(
    inner: optax.GradientTransformation,
    *,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    begin_step: int,
    end_step: int,
    frequency: int,
    total_steps: int,
    drop_fraction: float = 0.5,
    minimum_drop_fraction: float = 0.005,
    distribution: str = "erk",
    where: tree_lib.Where = None,
    momentum_policy: str = "mask_every_step",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """GraNet (Liu et al., NeurIPS 2021): gradual global magnitude pruning plus zero-cost neuroregeneration.

    Starts from ``distribution`` masks at ``initial_sparsity`` (0: dense-to-sparse; 0.5: sparse-to-sparse).
    Every ``frequency`` steps from ``begin_step``: up to ``end_step`` prune globally by raw |θ| to
    :func:`~unlearnx.sparse.cubic_sparsity`; then, until ``total_steps``, drop ⌈p_t·n_l⌉ per tensor and regrow
    as many by |∇L|, with p_t = :func:`~unlearnx.sparse.cosine_drop_fraction` (``drop_fraction`` →
    ``minimum_drop_fraction`` over ``total_steps``). Momentum is masked every step by default.
    """
    _check_window(begin_step, end_step, total_steps)
    sparsity_at = _cubic(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
    spread = _distribution(distribution)
    schedules.cosine_drop_fraction(  # validates the drop fractions now, not at trace time
        0, initial=drop_fraction, minimum=minimum_drop_fraction, total_steps=total_steps
    )

    def update_masks(weights, masks_, grads, step):
        sparsity = sparsity_at(step)
        pruned = jax.lax.cond(
            step <= end_step, lambda: prune_globally(weights, masks_, sparsity), lambda: masks_
        )
        weights = {p: jnp.where(pruned[p], w, 0.0) for p, w in weights.items()}
        fraction = schedules.cosine_drop_fraction(
            step, initial=drop_fraction, minimum=minimum_drop_fraction, total_steps=total_steps
        )
        return _regrow_all(weights, pruned, {p: jnp.abs(g) for p, g in grads.items()}, fraction)

    return _sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, initial_sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_every(frequency, begin_step, total_steps),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )


def gmp(
    inner: optax.GradientTransformation,
    *,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    begin_step: int,
    end_step: int,
    frequency: int,
    distribution: str = "erk",
    where: tree_lib.Where = None,
    momentum_policy: str = "mask_every_step",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Gradual magnitude pruning (Zhu & Gupta 2017): GraNet's global pruning without regrowth."""
    _check_window(begin_step, end_step)
    sparsity_at = _cubic(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
    spread = _distribution(distribution)

    def update_masks(weights, masks_, grads, step):
        return prune_globally(weights, masks_, sparsity_at(step))

    return _sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, initial_sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_every(frequency, begin_step, end_step),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )


def rigl(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    end_step: int,
    frequency: int = 100,
    drop_fraction: float = 0.3,
    growth: str = "gradient",
    distribution: str = "erk",
    where: tree_lib.Where = None,
    momentum_policy: str = "reset_regrown",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """RigL (Evci et al. 2020): fixed-sparsity ``distribution`` masks; every ``frequency`` steps until
    ``end_step`` (75% of training in the paper) drop the smallest |θ| and regrow as many inactive entries,
    with the drop fraction cosine-decayed from ``drop_fraction`` to 0. ``growth="gradient"`` regrows by
    |∇L| (RigL); ``"random"`` by uniform noise from ``fold_in(seed, step)``, identical on every replica
    (SET). Regrown weights start at 0 with zero momentum."""
    distributions._check_sparsity(sparsity)
    _check_window(0, end_step)
    checks.static_int("frequency", frequency, low=1, high=checks.INT32_MAX)
    checks.choice("growth", growth, ("gradient", "random"))
    schedules.cosine_drop_fraction(0, initial=drop_fraction, minimum=0.0, total_steps=end_step)
    spread = _distribution(distribution)
    key = jax.random.key(seed)

    def update_masks(weights, masks_, grads, step):
        fraction = schedules.cosine_drop_fraction(
            step, initial=drop_fraction, minimum=0.0, total_steps=end_step
        )
        if growth == "random":
            event = jax.random.fold_in(key, step)
            scores = {
                p: jax.random.uniform(jax.random.fold_in(event, i), g.shape)
                for i, (p, g) in enumerate(sorted(grads.items()))
            }
        else:
            scores = {p: jnp.abs(g) for p, g in grads.items()}
        return _regrow_all(weights, masks_, scores, fraction)

    return _sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_every(frequency, 1, end_step),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )


def set_sparse(
    inner: optax.GradientTransformation, *, sparsity: float, end_step: int, **options: Any
) -> optax.GradientTransformationExtraArgs:
    """SET (Mocanu et al. 2018): :func:`rigl` with random regrowth; ``options`` are rigl's (``frequency``,
    ``drop_fraction``, ``distribution``, ``where``, ``momentum_policy``, ``seed``)."""
    return rigl(inner, sparsity=sparsity, end_step=end_step, growth="random", **options)


def static_sparse(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    distribution: str = "erk",
    where: tree_lib.Where = None,
    momentum_policy: str = "mask_every_step",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """A fixed random mask with ``distribution`` sparsities (ERK or uniform), never updated."""
    distributions._check_sparsity(sparsity)
    spread = _distribution(distribution)
    return _sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, sparsity, where=where),
        update_masks=None,
        is_update_step=lambda step: jnp.asarray(False),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )
