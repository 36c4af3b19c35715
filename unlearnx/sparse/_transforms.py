"""Sparse training as optax transforms: GraNet and the baselines it is measured against.

Each transform wraps an inner optimizer and keeps masks, the step count and the inner state in a
:class:`SparseState`. One ``update`` does, in GraNet's order (step t counts optimizer steps, from 1):

1. the inner optimizer step, θ' = θ + u, and re-masking with the current masks, θ' ← θ' ⊙ m;
2. on mask-update steps (t mod ΔT = 0 in the algorithm's window, gated with ``lax.cond``): global
   magnitude pruning to the schedule's sparsity (GraNet, GMP), then per-tensor drop-and-grow: drop
   ⌈p_t·n_l⌉ more of the smallest ``|θ'|``, regrow as many entries with the largest score (``|∇L|`` for GraNet
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
``lax.cond`` branch), so a step without a mask update is the masked inner step plus a bool copy. The cond
still waits for every gradient (the prune is global); a training step wrapped by
:func:`~unlearnx.sparse.branch_on_mask_update` (``train.make_train_step`` does it) decides before its
forward pass, from ``SparseState.update_due``, and its ordinary steps have no cond at all. Counts are
exact: ⌈p·n⌉ and round((1 − s)·N) are taken from the schedules evaluated in Python float64 at each event
(for up to 65,536 events; beyond, from the traced schedule), with the product p·n computed exactly.

GraNet's two deliberate differences from the official code (``sparselearning/core.py``):

- the last pruning event, at k_f = ⌊t_f/ΔT⌋, reaches s_f exactly; the official loop (``k ≤ k_f − 1``
  in most revisions) stops one event early (at 0.89975 for s_f = 0.9 on its CIFAR schedule);
- the global prune keeps exactly round((1 − s)·N) weights, ties broken by position; the official
  strict test ``|w| > t``, t the ⌊(1 − s)·N⌋-th largest ``|w|``, keeps ⌊(1 − s)·N⌋ − 1 (fewer on ties).

The counts ⌈p_t·n_l⌉ equal Python's ``math.ceil(p_t * n_l)`` with p_t in float64, as the official
code computes them, for any layer size.

The default selector sparsifies every tensor of rank ≥ 2 (kernels), as GraNet does on CIFAR.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree
from unlearnx.sparse import _distributions as distributions
from unlearnx.sparse import _engine, _select
from unlearnx.sparse import _schedules as schedules
from unlearnx.sparse._engine import MOMENTUM_POLICIES, Distribution, MomentumPolicy, SparseState
from unlearnx.sparse._masks import _drop_and_grow, _prune_to_count

__all__ = ["MOMENTUM_POLICIES", "SparseState", "granet", "masks"]


def masks(opt_state: optax.OptState) -> PyTree:
    """The current masks of the first (outermost) :class:`SparseState` inside ``opt_state``.

    The state may be alone, in an ``optax.chain`` or ``optax.named_chain``, or nested (it is found with
    ``optax.tree.get_all_with_path``).

    Args:
        opt_state: an optimizer state that holds a :class:`SparseState`.

    Returns:
        The bool masks, a tree with the parameters' structure (all True for dense tensors).

    Raises:
        ValueError: no :class:`SparseState` in ``opt_state``.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> sparse_sgd = sparse.static_sparse(optax.sgd(0.1), sparsity=0.5)
        >>> opt = optax.chain(optax.clip_by_global_norm(1.0), sparse_sgd)
        >>> masks(opt.init({"w": jnp.ones((4, 4))}))["w"].sum().item()
        8
    """
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
    distribution: Distribution = "erk",
    where: tree_lib.Where = None,
    momentum_policy: MomentumPolicy = "mask_every_step",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """GraNet: gradual global magnitude pruning plus zero-cost neuroregeneration.

    Starts from ``distribution`` masks at ``initial_sparsity`` (0: dense-to-sparse; 0.5: sparse-to-sparse).
    Every ΔT = ``frequency`` steps from ``begin_step``: up to ``end_step`` prune globally by raw ``|θ|`` to
    s_t = :func:`~unlearnx.sparse.cubic_sparsity`, keeping round((1 − s_t)·N) weights; then, until
    ``total_steps``, drop ⌈p_t·n_l⌉ per tensor and regrow as many by ``|∇L|``, with
    p_t = :func:`~unlearnx.sparse.cosine_drop_fraction`. A weight regrown after the global prune removed it
    restarts at 0 with zero optimizer state, as in the official code (module docstring: two differences).

    Args:
        inner: the wrapped optimizer (e.g. ``optax.sgd(0.1, momentum=0.9, nesterov=True)``).
        final_sparsity: s_f ∈ [0, 1) over the selected tensors.
        initial_sparsity: s_i ∈ [0, 1), the sparsity of the initial masks.
        begin_step: t₀, the first pruning step.
        end_step: t_f, the last pruning step (the paper: half of training).
        frequency: ΔT ≥ 1.
        total_steps: T, the end of regrowth and of the cosine decay of p_t.
        drop_fraction: p₀ ∈ [0, 1].
        minimum_drop_fraction: η_min ∈ [0, p₀].
        distribution: the initial masks' per-tensor sparsities, ``"erk"`` or ``"uniform"``.
        where: the tensors to sparsify (:mod:`unlearnx.tree` selector; default: every tensor of rank ≥ 2).
        momentum_policy: one of :data:`MOMENTUM_POLICIES` (module docstring).
        seed: the seed of the random initial masks.

    Returns:
        An optax transformation with a :class:`SparseState`; updated parameters are exactly 0 where inactive.

    Raises:
        ValueError: a hyper-parameter out of range, an unknown option, or a window without pruning event.
        TypeError: a traced hyper-parameter.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> opt = sparse.granet(optax.sgd(0.1), final_sparsity=0.75, begin_step=0, end_step=4, frequency=2,
        ...                     total_steps=8)
        >>> params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}; state = opt.init(params)
        >>> for _ in range(4):  # steps 2 and 4 prune (to s = 0.65625, then 0.75) and regrow
        ...     updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> int(sparse.masks(state)["w"].sum())  # round(0.25 · 16) active
        4
        >>> int((params["w"] != 0).sum())  # the weight regrown at step 4 starts at 0
        3

    References:
        Liu et al., `Sparse Training via Boosting Pruning Plasticity with Neuroregeneration
        <https://arxiv.org/abs/2106.10404>`_, NeurIPS 2021.
    """
    update_masks = _granet_masks(
        initial_sparsity, final_sparsity, begin_step, end_step, frequency, total_steps,
        drop_fraction, minimum_drop_fraction,
    )  # fmt: skip
    spread = _distribution(distribution)
    return _engine.sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, initial_sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_engine.every(frequency, begin_step, total_steps),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )


def _granet_masks(
    initial: float,
    final: float,
    begin: int,
    end: int,
    frequency: int,
    total: int,
    drop: float,
    minimum: float,
) -> Callable:
    """GraNet's validated mask update ``(weights, masks, grads, step) -> (masks, survivors)``: the global
    prune up to ``end``, then per-tensor drop-and-grow by ``|∇L|``."""
    _engine.check_window(begin, end, total)
    kept_at = _cubic(initial, final, begin, end, frequency)
    schedules.cosine_drop_fraction(0, initial=drop, minimum=minimum, total_steps=total)  # validates now
    rate_at = _death_rates(drop, minimum, total, frequency, begin, total)

    def update_masks(weights, masks_, grads, step):
        pruned = jax.lax.cond(step <= end, lambda: _prune(kept_at, weights, masks_, step), lambda: masks_)
        # As the official apply_mask after the prune: pruned weights are 0 before the drop and regrowth.
        weights = {p: jnp.where(pruned[p], w, 0.0) for p, w in weights.items()}
        regrown = _regrow_all(weights, pruned, {p: jnp.abs(g) for p, g in grads.items()}, rate_at(step))
        return regrown, {p: pruned[p] & masks_[p] for p in masks_}

    return update_masks
