"""The sparse-training baselines GraNet is measured against, as optax transforms over the same engine:
gradual magnitude pruning (GMP), RigL, SET and a static mask (see :mod:`unlearnx.sparse._transforms` for
what one ``update`` does)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx.sparse import _distributions as distributions
from unlearnx.sparse import _engine
from unlearnx.sparse import _schedules as schedules
from unlearnx.sparse._engine import Distribution, Growth, MomentumPolicy
from unlearnx.sparse._transforms import _cubic, _death_rates, _distribution, _prune, _regrow_all

__all__ = ["gmp", "rigl", "set_sparse", "static_sparse"]


def gmp(
    inner: optax.GradientTransformation,
    *,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    begin_step: int,
    end_step: int,
    frequency: int,
    distribution: Distribution = "erk",
    where: tree_lib.Where = None,
    momentum_policy: MomentumPolicy = "mask_every_step",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Gradual magnitude pruning: GraNet's global pruning without regrowth.

    Every ΔT = ``frequency`` steps from ``begin_step`` to ``end_step``, keeps the round((1 − s_t)·N)
    largest ``|θ|`` over all selected tensors, s_t = :func:`~unlearnx.sparse.cubic_sparsity`.

    Args:
        inner: the wrapped optimizer.
        final_sparsity: s_f ∈ [0, 1).
        initial_sparsity: s_i ∈ [0, 1) (0: dense start, as Zhu & Gupta).
        begin_step: t₀.
        end_step: t_f.
        frequency: ΔT ≥ 1.
        distribution: the masks' per-tensor sparsities, ``"erk"`` or ``"uniform"``.
        where: the tensors to sparsify (:mod:`unlearnx.tree` selector; default: every tensor of rank ≥ 2).
        momentum_policy: one of :data:`~unlearnx.sparse.MOMENTUM_POLICIES`.
        seed: the seed of the random initial masks.

    Returns:
        An optax transformation whose state is a :class:`~unlearnx.sparse.SparseState`.

    Raises:
        ValueError: a hyper-parameter out of range or an unknown option.
        TypeError: a traced hyper-parameter.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> opt = sparse.gmp(optax.sgd(0.0), final_sparsity=0.5, begin_step=0, end_step=2, frequency=1)
        >>> params, state = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}, None
        >>> state = opt.init(params)
        >>> for _ in range(2):  # the 4 smallest weights go, by step 2
        ...     updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params["w"].tolist()
        [[0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0]]

    References:
        Zhu & Gupta, `To prune, or not to prune <https://arxiv.org/abs/1710.01878>`_, 2017.
    """
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
    growth: Growth = "gradient",
    distribution: Distribution = "erk",
    where: tree_lib.Where = None,
    momentum_policy: MomentumPolicy = "reset_regrown",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """RigL: fixed-sparsity masks whose active entries move by drop-and-grow.

    Every ``frequency`` steps until ``end_step`` (75% of training in the paper), each tensor drops ⌈p_t·n_l⌉
    of its smallest ``|θ|`` and regrows as many inactive entries, with the drop fraction
    p_t = :func:`~unlearnx.sparse.cosine_drop_fraction` from ``drop_fraction`` to 0. ``growth="gradient"``
    regrows by ``|∇L|`` (RigL); ``"random"`` by uniform noise from ``fold_in(seed, step)``, identical on
    every replica (SET). Regrown weights start at 0 with zero momentum.

    Args:
        inner: the wrapped optimizer.
        sparsity: s ∈ [0, 1) over the selected tensors, constant.
        end_step: the last mask-update step.
        frequency: the steps between mask updates.
        drop_fraction: p₀ ∈ [0, 1].
        growth: ``"gradient"`` or ``"random"``.
        distribution: the masks' per-tensor sparsities, ``"erk"`` or ``"uniform"``.
        where: the tensors to sparsify (:mod:`unlearnx.tree` selector; default: every tensor of rank ≥ 2).
        momentum_policy: one of :data:`~unlearnx.sparse.MOMENTUM_POLICIES`.
        seed: the seed of the random initial masks.

    Returns:
        An optax transformation whose state is a :class:`~unlearnx.sparse.SparseState`.

    Raises:
        ValueError: a hyper-parameter out of range or an unknown option.
        TypeError: a traced hyper-parameter.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> opt = sparse.rigl(optax.sgd(0.1), sparsity=0.9, end_step=100, distribution="uniform")
        >>> state = opt.init({"w": jnp.ones((10, 10))})
        >>> int(sparse.masks(state)["w"].sum())  # round(0.1 · 100) active, at every step
        10

    References:
        Evci et al., `Rigging the Lottery: Making All Tickets Winners <https://arxiv.org/abs/1911.11134>`_,
        ICML 2020.
    """
    distributions._check_sparsity(sparsity)
    _engine.check_window(0, end_step)
    checks.static_int("frequency", frequency, low=1, high=checks.INT32_MAX)
    checks.choice("growth", growth, ("gradient", "random"))
    schedules.cosine_drop_fraction(0, initial=drop_fraction, minimum=0.0, total_steps=end_step)
    spread = _distribution(distribution)
    key = jax.random.key(seed)
    rate_at = _death_rates(drop_fraction, 0.0, end_step, frequency, 1, end_step)

    def update_masks(weights, masks_, grads, step):
        scores = _random_scores(key, step, grads) if growth == "random" else jax.tree.map(jnp.abs, grads)
        return _regrow_all(weights, masks_, scores, rate_at(step)), masks_

    return _engine.sparse_transform(
        inner,
        initial_sparsities=lambda params: spread(params, sparsity, where=where),
        update_masks=update_masks,
        is_update_step=_engine.every(frequency, 1, end_step),
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )


def _random_scores(key: jax.Array, step: jax.Array, grads: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """SET's regrowth scores: uniform noise from ``fold_in(fold_in(key, step), i)``, i the sorted path's
    index."""
    event = jax.random.fold_in(key, step)
    return {
        p: jax.random.uniform(jax.random.fold_in(event, i), g.shape)
        for i, (p, g) in enumerate(sorted(grads.items()))
    }


def set_sparse(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    end_step: int,
    frequency: int = 100,
    drop_fraction: float = 0.3,
    distribution: Distribution = "erk",
    where: tree_lib.Where = None,
    momentum_policy: MomentumPolicy = "reset_regrown",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """SET: :func:`rigl` with random regrowth (``growth="random"``).

    Args:
        inner: the wrapped optimizer.
        sparsity: s ∈ [0, 1) over the selected tensors, constant.
        end_step: the last mask-update step.
        frequency: the steps between mask updates.
        drop_fraction: p₀ ∈ [0, 1].
        distribution: the masks' per-tensor sparsities, ``"erk"`` or ``"uniform"``.
        where: the tensors to sparsify (:mod:`unlearnx.tree` selector; default: every tensor of rank ≥ 2).
        momentum_policy: one of :data:`~unlearnx.sparse.MOMENTUM_POLICIES`.
        seed: the seed of the random initial masks.

    Returns:
        An optax transformation whose state is a :class:`~unlearnx.sparse.SparseState`.

    Raises:
        ValueError: a hyper-parameter out of range or an unknown option.
        TypeError: a traced hyper-parameter.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> opt = sparse.set_sparse(optax.sgd(0.1), sparsity=0.5, end_step=10, distribution="uniform")
        >>> int(sparse.masks(opt.init({"w": jnp.ones((4, 4))}))["w"].sum())
        8

    References:
        Mocanu et al., `Scalable training of artificial neural networks with adaptive sparse connectivity
        inspired by network science <https://arxiv.org/abs/1707.04780>`_, Nature Communications 2018.
    """
    return rigl(
        inner,
        sparsity=sparsity,
        end_step=end_step,
        frequency=frequency,
        drop_fraction=drop_fraction,
        growth="random",
        distribution=distribution,
        where=where,
        momentum_policy=momentum_policy,
        seed=seed,
    )


def static_sparse(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    distribution: Distribution = "erk",
    where: tree_lib.Where = None,
    momentum_policy: MomentumPolicy = "mask_every_step",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """A fixed random mask with ``distribution`` sparsities (ERK or uniform), never updated.

    Args:
        inner: the wrapped optimizer.
        sparsity: s ∈ [0, 1) over the selected tensors.
        distribution: the masks' per-tensor sparsities, ``"erk"`` or ``"uniform"``.
        where: the tensors to sparsify (:mod:`unlearnx.tree` selector; default: every tensor of rank ≥ 2).
        momentum_policy: one of :data:`~unlearnx.sparse.MOMENTUM_POLICIES`.
        seed: the seed of the random initial masks.

    Returns:
        An optax transformation whose state is a :class:`~unlearnx.sparse.SparseState`.

    Raises:
        ValueError: a hyper-parameter out of range or an unknown option.
        TypeError: a traced hyper-parameter.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> opt = sparse.static_sparse(optax.sgd(0.1), sparsity=0.75, distribution="uniform")
        >>> params = {"b": jnp.ones(4), "w": jnp.ones((4, 4))}
        >>> updates, _ = opt.update({"b": jnp.ones(4), "w": jnp.ones((4, 4))}, opt.init(params), params)
        >>> int((params["w"] + updates["w"] != 0).sum()), int((params["b"] + updates["b"] != 0).sum())
        (4, 4)
    """
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
