"""Sparse training as optax transforms: GraNet and the baselines it is measured against.

Each transform wraps an inner optimizer and keeps masks, the step count and the inner state in a
:class:`SparseState`. One ``update`` does, in GraNet's order (step t counts optimizer steps, from 1):

1. the inner optimizer step, θ' = θ + u, and re-masking with the current masks, θ' ← θ' ⊙ m;
2. on mask-update steps (t mod ΔT = 0 in the algorithm's window, gated with ``lax.cond``): global
   magnitude pruning to the schedule's sparsity (GraNet, GMP), then per-tensor drop-and-grow: drop
   ⌈p_t·n_l⌉ more of the smallest |θ'|, regrow as many entries with the largest score (|∇L| for GraNet
   and RigL — the dense gradient, since parameters are stored masked; uniform noise for SET);
3. the returned update is θ' ⊙ m_new − θ, so after ``optax.apply_updates`` every inactive parameter is
   exactly 0. A weight keeps its value (and, by ``momentum_policy``, its optimizer state) only if it was
   active before the event and survived the global prune: a regrown weight starts at 0 — also one that
   the global prune removed and the same event regrew, as in the official GraNet code, which zeroes
   globally pruned weights and their momentum before regrowth — while one dropped and regrown by the
   per-tensor step keeps its value, as there.

``momentum_policy`` (the inner state's parameter-shaped leaves): ``"mask_every_step"`` zeroes the state of
every inactive entry and of every regrown one (the official ``apply_mask`` after the optimizer step and
after the mask update); ``"reset_regrown"`` zeroes it only for regrown entries; ``"none"`` leaves it.

The mask update reads only the step's inputs and gradients (the inner step is recomputed inside the
``lax.cond`` branch), so a step without a mask update is the masked inner step plus a bool copy. Counts are
exact: ⌈p·n⌉ and round((1 − s)·N) are taken from the schedules evaluated in Python float64 at each event
(for up to 65,536 events; beyond, from the traced schedule), with the product p·n computed exactly.

The default selector sparsifies every tensor of rank ≥ 2 (kernels), as GraNet does on CIFAR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx.sparse import _engine, _select, distributions, schedules
from unlearnx.sparse._engine import MOMENTUM_POLICIES, SparseState
from unlearnx.sparse.masks import _drop_and_grow, _prune_to_count

PyTree = Any

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


def masks(opt_state: optax.OptState) -> PyTree:
    """The current masks of the first (outermost) :class:`SparseState` inside ``opt_state``: alone, in an
    ``optax.chain`` or ``optax.named_chain``, or nested (found with ``optax.tree.get_all_with_path``)."""
    found = optax.tree.get_all_with_path(opt_state, "SparseState")
    if found:
        return found[0][1].masks
    raise ValueError("no SparseState (sparse training state) found in this optimizer state")


def _cubic(initial: float, final: float, begin_step: int, end_step: int, frequency: int) -> Callable:
    """The validated Zhu–Gupta schedule shared by GraNet and GMP as ``(step, N) -> round((1 − s_t)·N)``."""
    distributions._check_sparsity(initial, "initial_sparsity")
    distributions._check_sparsity(final, "final_sparsity")
    kwargs = dict(initial=initial, final=final, begin_step=begin_step, end_step=end_step, frequency=frequency)
    schedules.cubic_sparsity(0, **kwargs)  # validates sparsities and the window now, not at trace time
    return _kept_counts(kwargs, begin_step, end_step)


def _prune(kept_at: Callable, weights, masks_, step) -> dict[str, jax.Array]:
    return _prune_to_count(weights, masks_, kept_at(step, sum(int(np.size(w)) for w in weights.values())))


def _distribution(name: str) -> Callable[..., PyTree]:
    table = {"erk": distributions.erk_sparsities, "uniform": distributions.uniform_sparsities}
    return table[checks.choice("distribution", name, tuple(table))]


def _regrow_all(weights, masks_, scores, fraction) -> dict[str, jax.Array]:
    return _drop_and_grow(weights, masks_, scores, fraction)


def _death_rates(initial: float, minimum: float, total_steps: int, frequency: int, begin: int, end: int):
    """``step -> p_t`` for the events in [begin, end]: exact float64 values (``(limbs, shift)``) from a table,
    or the traced schedule when there are too many events."""
    kwargs = dict(initial=initial, minimum=minimum, total_steps=total_steps)
    steps = schedules._event_steps(frequency, begin, end)
    if steps is None:
        return lambda step: schedules.cosine_drop_fraction(step, **kwargs)
    limbs, shifts = _select.fraction_table([schedules._cosine_value(t, **kwargs) for t in steps])
    lookup = schedules._lookup
    return lambda step: (list(lookup(limbs, steps, step)), lookup(shifts, steps, step))


def _kept_counts(schedule: dict, begin: int, end: int) -> Callable:
    """``(step, N) -> round((1 − s_t)·N)`` for the pruning events in [begin, end], from a Python table."""
    steps = schedules._event_steps(schedule["frequency"], begin, end)

    def kept(step, size: int):
        if steps is None:
            sparsity = schedules.cubic_sparsity(step, **schedule)
            return jnp.round((1.0 - sparsity) * size).astype(jnp.int32)
        table = [round((1.0 - schedules._cubic_value(t, **schedule)) * size) for t in steps]
        return schedules._lookup(np.asarray(table, np.int32), steps, step)

    return kept


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
    :func:`~unlearnx.sparse.cubic_sparsity`, keeping round((1 − s_t)·N) weights; then, until
    ``total_steps``, drop ⌈p_t·n_l⌉ per tensor and regrow as many by |∇L|, with p_t =
    :func:`~unlearnx.sparse.cosine_drop_fraction` (``drop_fraction`` → ``minimum_drop_fraction`` over
    ``total_steps``). A weight removed by the global prune and regrown in the same event restarts at 0
    with zero optimizer state, as in the official code. Momentum is masked every step by default.

    Two deliberate differences from the official code (``sparselearning/core.py``):

    - the last pruning event, at k_f = ⌊t_f/ΔT⌋, reaches s_f exactly; the official loop (``k ≤ k_f − 1``
      in most revisions) stops one event early (at 0.89975 for s_f = 0.9 on its CIFAR schedule);
    - the global prune keeps exactly round((1 − s)·N) weights, ties broken by position; the official
      strict test ``|w| > t``, t the ⌊(1 − s)·N⌋-th largest |w|, keeps ⌊(1 − s)·N⌋ − 1 (fewer on ties).

    The counts ⌈p_t·n_l⌉ equal Python's ``math.ceil(p_t * n_l)`` with p_t in float64, as the official
    code computes them, for any layer size.

    >>> import jax, jax.numpy as jnp, optax
    >>> from unlearnx import sparse
    >>> opt = sparse.granet(optax.sgd(0.1), final_sparsity=0.75, begin_step=0, end_step=4, frequency=2,
    ...                     total_steps=8)
    >>> params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    >>> state = opt.init(params)
    >>> for _ in range(4):  # steps 2 and 4 prune (to s = 0.65625, then 0.75) and regrow
    ...     updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> int(sparse.masks(state)["w"].sum())  # round(0.25 · 16)
    4

    Reference: Liu et al., "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration",
    NeurIPS 2021 (https://arxiv.org/abs/2106.10404).
    """
    _engine.check_window(begin_step, end_step, total_steps)
    kept_at = _cubic(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
    spread = _distribution(distribution)
    schedules.cosine_drop_fraction(  # validates the drop fractions now, not at trace time
        0, initial=drop_fraction, minimum=minimum_drop_fraction, total_steps=total_steps
    )
    rate_at = _death_rates(
        drop_fraction, minimum_drop_fraction, total_steps, frequency, begin_step, total_steps
    )

    def update_masks(weights, masks_, grads, step):
        pruned = jax.lax.cond(
            step <= end_step, lambda: _prune(kept_at, weights, masks_, step), lambda: masks_
        )
        # As the official apply_mask after the prune: pruned weights are 0 before the drop and regrowth.
        weights = {p: jnp.where(pruned[p], w, 0.0) for p, w in weights.items()}
        regrown = _regrow_all(weights, pruned, {p: jnp.abs(g) for p, g in grads.items()}, rate_at(step))
        return regrown, {p: pruned[p] & masks_[p] for p in masks_}

    return _engine.sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, initial_sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_engine.every(frequency, begin_step, total_steps),
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
    _engine.check_window(begin_step, end_step)
    kept_at = _cubic(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
    spread = _distribution(distribution)

    def update_masks(weights, masks_, grads, step):
        pruned = _prune(kept_at, weights, masks_, step)
        return pruned, pruned

    return _engine.sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, initial_sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_engine.every(frequency, begin_step, end_step),
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
    _engine.check_window(0, end_step)
    checks.static_int("frequency", frequency, low=1, high=checks.INT32_MAX)
    checks.choice("growth", growth, ("gradient", "random"))
    schedules.cosine_drop_fraction(0, initial=drop_fraction, minimum=0.0, total_steps=end_step)
    spread = _distribution(distribution)
    key = jax.random.key(seed)
    rate_at = _death_rates(drop_fraction, 0.0, end_step, frequency, 1, end_step)

    def update_masks(weights, masks_, grads, step):
        fraction = rate_at(step)
        if growth == "random":
            event = jax.random.fold_in(key, step)
            scores = {
                p: jax.random.uniform(jax.random.fold_in(event, i), g.shape)
                for i, (p, g) in enumerate(sorted(grads.items()))
            }
        else:
            scores = {p: jnp.abs(g) for p, g in grads.items()}
        return _regrow_all(weights, masks_, scores, fraction), masks_

    return _engine.sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_engine.every(frequency, 1, end_step),
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
    return _engine.sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, sparsity, where=where),
        update_masks=None,
        is_update_step=lambda step: jnp.asarray(False),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )
