"""A training step whose mask-update steps and ordinary steps are two branches taken before the forward pass.

Inside a sparse transform the mask update is a ``lax.cond`` on the step count. The cond's update branch
needs every tensor's gradient (GraNet's prune is global), so in a step traced as one program no tensor's
masked update can start before the backward pass has finished, even on the 99 steps in 100 where the cheap
branch is taken: XLA can no longer overlap the last layers' updates with the first layers' backward pass.
:func:`branch_on_mask_update` moves the decision to the top of the step, where it costs nothing: each
:class:`~unlearnx.sparse.SparseState` carries ``update_due``, the schedule's answer for its next update,
so the step becomes ``lax.cond(any due, step, step without mask updates)`` and its ordinary branch is a
static sparse step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx.sparse._engine import NOT_DUE, SparseState

__all__ = ["branch_on_mask_update"]

Step = TypeVar("Step", bound=Callable[..., Any])


def _due_flags(tree: Any) -> list[jax.Array]:
    is_state = lambda node: isinstance(node, SparseState)
    states = [node for node in jax.tree.leaves(tree, is_leaf=is_state) if is_state(node)]
    return [state.update_due for state in states if state.update_due is not None]


def branch_on_mask_update(step_fn: Step) -> Step:
    """Wraps a training step so that it branches on the sparse transforms' mask updates before it starts.

    .. math::

        \\text{step}(a) = \\begin{cases}
        \\text{step\\_fn}(a) & \\text{if } \\bigvee_s \\texttt{update\\_due}_s \\\\
        \\text{step\\_fn}(a) \\text{ with no mask update} & \\text{otherwise} \\end{cases}

    over every :class:`~unlearnx.sparse.SparseState` ``s`` found in the step's arguments. The second branch
    is traced with those states marked as not due, so their transforms skip the mask update's ``lax.cond``
    (and the wait for every gradient that the cond brings); the first branch is ``step_fn`` unchanged, its
    conds deciding per state. Both compute what ``step_fn`` computes, bit for bit; the step is traced twice.
    A step whose arguments hold no ``SparseState`` with mask updates (a static mask has none) runs
    unwrapped. Sparse states created or rebuilt inside the step are not marked and keep their own cond
    (correct, not faster). :func:`unlearnx.train.make_train_step` applies it.

    Args:
        step_fn: a function of pytrees (e.g. ``step(state, batch)``), traced under ``jax.jit``; array leaves
            pass through the ``lax.cond``, any other leaf (a static value) reaches both branches unchanged.

    Returns:
        A function of the same arguments and results.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from unlearnx import sparse
        >>> opt = sparse.rigl(optax.sgd(0.1), sparsity=0.5, end_step=100, frequency=2)
        >>> params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
        >>> def step(params, state):
        ...     updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
        ...     return optax.apply_updates(params, updates), state
        >>> wrapped = jax.jit(sparse.branch_on_mask_update(step))
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     new, new_state = wrapped(params, state)
        ...     same = jax.tree.map(jnp.array_equal, (new, new_state), jax.jit(step)(params, state))
        ...     print(bool(state.update_due), all(jax.tree.leaves(same)))
        ...     params, state = new, new_state
        False True
        True True
        False True
    """

    @functools.wraps(step_fn)
    def step(*args: Any, **kwargs: Any) -> Any:
        flags = _due_flags((args, kwargs))
        if not flags:
            return step_fn(*args, **kwargs)
        leaves, treedef = jax.tree.flatten((args, kwargs))
        traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array | np.ndarray)]

        def call(arrays, mark):  # non-array leaves (static under jit) are closed over, not cond operands
            full = list(leaves)
            for i, array in zip(traced, arrays, strict=True):
                full[i] = array
            inner_args, inner_kwargs = jax.tree.unflatten(treedef, full)
            checked = _due_flags((inner_args, inner_kwargs)) if mark else []
            token = NOT_DUE.set(frozenset(map(id, checked)))
            try:
                return step_fn(*inner_args, **inner_kwargs)
            finally:
                NOT_DUE.reset(token)

        due = functools.reduce(jnp.logical_or, flags)
        operands = [leaves[i] for i in traced]
        return jax.lax.cond(due, lambda a: call(a, False), lambda a: call(a, True), operands)

    return step  # type: ignore[return-value]
