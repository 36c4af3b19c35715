"""The machinery shared by the sparse transforms (private): state, masking, the update step.

See :mod:`unlearnx.sparse` (its transforms module) for the step's order and the momentum policies.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree
from unlearnx.sparse import _distributions as distributions
from unlearnx.sparse._masks import keep_top

MOMENTUM_POLICIES = ("mask_every_step", "reset_regrown", "none")
MomentumPolicy = Literal["mask_every_step", "reset_regrown", "none"]
Distribution = Literal["erk", "uniform"]
Growth = Literal["gradient", "random"]


class SparseState(NamedTuple):
    """The state of every sparse transform of :mod:`unlearnx.sparse`.

    Attributes:
        count: optimizer steps taken (int32).
        masks: a bool tree with the parameters' structure (all True for dense tensors).
        inner_state: the wrapped optimizer's state.
        update_due: whether the next update (step ``count + 1``) updates the masks (bool scalar; None for a
            static mask): the schedule's answer, computed one step ahead, so that a training step can
            branch on it before its forward pass (:func:`~unlearnx.sparse.branch_on_mask_update`).

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> state = sparse.static_sparse(optax.sgd(0.1), sparsity=0.5).init({"w": jnp.ones((2, 4))})
        >>> type(state).__name__, int(state.count), int(state.masks["w"].sum()), state.update_due
        ('SparseState', 0, 4, None)
        >>> rigl = sparse.rigl(optax.sgd(0.1), sparsity=0.5, end_step=10, frequency=2)
        >>> bool(rigl.init({"w": jnp.ones((2, 4))}).update_due)  # step 1 is not a multiple of 2
        False
    """

    count: jax.Array
    masks: PyTree
    inner_state: optax.OptState
    update_due: jax.Array | None


# ids of the ``update_due`` values (tracers) that :func:`~unlearnx.sparse.branch_on_mask_update` has checked
# to be False in the branch being traced: an update whose state carries one of them skips the mask update's
# ``lax.cond`` (and the join on every gradient that it brings); any other state keeps the ``lax.cond``.
NOT_DUE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("not_due", default=frozenset())


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
    chosen = [
        (index, path, np.shape(leaf), round((1.0 - per_tensor[path]) * np.size(leaf)))
        for index, (path, leaf) in enumerate(tree_lib.leaves_with_paths(params))
        if path in per_tensor
    ]

    def draw(key):  # one compilation for all tensors, not one per operation and shape
        return {
            path: keep_top(jax.random.uniform(jax.random.fold_in(key, index), shape), count)
            for index, path, shape, count in chosen
        }

    out = jax.jit(draw)(jax.random.key(seed))
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


def _mask_inner_state(inner, state, policy: str, new_masks: PyTree, live: PyTree):
    """Zeroes the inner state of inactive entries (``mask_every_step``) and of regrown ones (active now,
    not ``live``: not carried over), by ``policy``."""
    if policy == "none" or (policy == "reset_regrown" and live is new_masks):
        return state  # (a static mask regrows nothing)
    if policy == "mask_every_step":
        keep = live
    else:  # reset_regrown: zero the state only where a weight has just become active
        keep = jax.tree.map(lambda new, kept: kept | ~new, new_masks, live)
    return optax.tree_utils.tree_map_params(
        inner,
        lambda leaf, m: jnp.where(m, leaf, jnp.zeros_like(leaf)),
        state,
        keep,
        transform_non_params=lambda leaf: leaf,
    )


def sparse_transform(
    inner: optax.GradientTransformation,
    *,
    initial_sparsities: Callable[[PyTree], PyTree],
    update_masks: Callable[..., dict[str, jax.Array]] | None,
    is_update_step: Callable[[jax.Array], jax.Array],
    where: tree_lib.Where,
    momentum_policy: MomentumPolicy,
    seed: int,
) -> optax.GradientTransformationExtraArgs:
    """Builds a masked optimizer; ``update_masks(weights, masks, grads, step) -> (masks, carried)`` acts on
    flat ``{path: array}`` dicts of the selected tensors and runs on steps where ``is_update_step(step)``;
    ``carried`` marks the entries whose value and state carry over (a subset of the old masks)."""
    inner = optax.with_extra_args_support(inner)

    def _due(step: jax.Array) -> jax.Array | None:
        return None if update_masks is None else jnp.asarray(is_update_step(step), bool)

    def init(params):
        _check_momentum_policy(inner, params, momentum_policy)
        distributions._selected_paths(params, where)  # raises if nothing is selected
        return SparseState(
            jnp.zeros([], jnp.int32),
            _initial_masks(params, initial_sparsities(params), seed),
            inner.init(params),
            _due(jnp.ones([], jnp.int32)),
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("sparse transforms need params: call update(grads, state, params)")
        tree_lib.check_same_structure(params, grads, names=("params", "grads"))
        tree_lib.check_same_structure(params, state.masks, names=("params", "state.masks"))
        updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        step = state.count + 1
        new_masks = live = state.masks  # live: active entries whose value and state carry over
        if update_masks is not None and id(state.update_due) not in NOT_DUE.get():
            paths = list(distributions._selected_paths(params, where))
            old = _flat(state.masks, paths)

            def refresh():
                # The inner step again, so that the branch reads only inputs and gradients: the cheap branch
                # then leaves the masking fused with the inner step, as in a static sparse step.
                again, _ = inner.update(grads, state.inner_state, params, **extra_args)
                weights, steps = _flat(params, paths), _flat(again, paths)
                candidate = {p: jnp.where(old[p], weights[p] + steps[p], 0.0) for p in paths}
                fresh, carried = update_masks(candidate, old, _flat(grads, paths), step)
                return fresh, {p: fresh[p] & carried[p] for p in paths}

            # The cond needs every tensor's gradient (the global prune), so no tensor's masked update can
            # start before the last gradient is ready: on 2 idle cores that join costs the digits MLP
            # 256-256 ~8% of a dense step (GraNet 1.13-1.16x, static 1.03-1.09x). A step wrapped by
            # branch_on_mask_update takes this path only on mask-update steps; its other steps skip the cond.
            fresh, kept = jax.lax.cond(state.update_due, refresh, lambda: (old, old))
            new_masks = _unflat(state.masks, fresh, state.masks)
            live = _unflat(state.masks, kept, state.masks)
        masked = lambda p, u, m: (jnp.where(m, p + u, jnp.zeros_like(p)) - p).astype(p.dtype)
        final = jax.tree.map(masked, params, updates, live)
        inner_state = _mask_inner_state(inner, inner_state, momentum_policy, new_masks, live)
        return final, SparseState(step, new_masks, inner_state, _due(step + 1))

    return optax.GradientTransformationExtraArgs(init, update)


def every(frequency: int, begin: int, end: int) -> Callable[[jax.Array], jax.Array]:
    return lambda step: (step % frequency == 0) & (step >= begin) & (step <= end)


def check_window(begin_step: int, end_step: int, total_steps: int | None = None) -> None:
    checks.static_int("begin_step", begin_step, low=0, high=checks.INT32_MAX)
    checks.static_int("end_step", end_step, low=0, high=checks.INT32_MAX)
    if total_steps is not None:
        checks.static_int("total_steps", total_steps, low=1, high=checks.INT32_MAX)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be greater than begin_step ({begin_step})")
    if total_steps is not None and total_steps < end_step:
        raise ValueError(f"total_steps ({total_steps}) must be at least end_step ({end_step})")
