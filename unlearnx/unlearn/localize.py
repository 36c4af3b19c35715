"""Localised unlearning: restrict any objective's updates to the parameters SSD's importance ratio selects.

RESTOR finds that unlearning works better when it is localised to the corrupted knowledge; SSD (Foster et
al.) gives a data-driven localisation. With the diagonal importances I_f of the forget documents and I_D of
the clean corpus (:func:`unlearnx.fisher.diagonal`), the selection is SSD's

    selectedᵢ ⇔ I_f[i] > α · I_D[i]

(computed by :func:`unlearnx.unlearn.dampening_factors` with λ = 0, where a selected parameter gets
factor 0 and any other 1), and :func:`masked_updates` zeroes the optimizer's updates outside it:

    uᵢ ← uᵢ · selectedᵢ

so ``optax.chain(optimizer, masked_updates(selection))`` (or :func:`localized`) turns any unlearning
objective into its localised version. The selection lives in the optimizer state, so it is checkpointed and
sharded with it. α can come from :func:`unlearnx.unlearn.assd_alpha` (a percentile of the ratio).

:func:`random_selection` is the control of that localisation: exactly as many parameters as a given
selection keeps (``count``), drawn uniformly at random, so "localising to SSD's selection helps" can be told
apart from "updating fewer parameters helps".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import _validation as checks
from unlearnx import fisher
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree
from unlearnx.unlearn._ssd import dampening_factors

__all__ = [
    "MaskedUpdatesState",
    "importances",
    "localized",
    "masked_updates",
    "random_selection",
    "selection",
    "selected_count",
    "selected_fraction",
]


def selection(
    forget_importance: PyTree, full_importance: PyTree, *, alpha: float, where: tree_lib.Where = None
) -> PyTree:
    """SSD's per-parameter selection I_f > α · I_D as a bool tree (``False`` outside ``where``).

    Args:
        forget_importance: I_f (non-negative, finite), any pytree.
        full_importance: I_D, the same structure.
        alpha: threshold α ≥ 0.
        where: selector of the parameters that may be selected (default: all but batch statistics).

    Returns:
        A tree of bool arrays with ``forget_importance``'s structure and shapes.

    Raises:
        ValueError: mismatched trees, negative/non-finite importances (checked when concrete, also when closed
            over by an outer ``jit``) or a negative/non-finite α.
        TypeError: a traced α (hyper-parameters are static: ``jax.jit(selection, static_argnames="alpha")``).

    Examples:
        >>> import jax.numpy as jnp
        >>> forget, full = {"w": jnp.asarray([4.0, 1.0, 0.5])}, {"w": jnp.ones(3)}
        >>> selection(forget, full, alpha=2.0)["w"].tolist()  # 4 > 2·1; 1 and 0.5 are not
        [True, False, False]
    """
    allowed = tree_lib.trainable(forget_importance, where)
    # λ = 0 maps every selected parameter to β = 0 and every other one to β = 1.
    factors = dampening_factors(forget_importance, full_importance, alpha=alpha, lam=0.0, selected=allowed)
    return jax.tree.map(lambda beta: beta < 0.5, factors)


def selected_count(mask_tree: PyTree) -> int:
    """Number of scalars a bool selection tree keeps, Σᵢ selectedᵢ (concrete trees only).

    Args:
        mask_tree: a tree of bool (or 0/1) arrays, e.g. from :func:`selection`.

    Returns:
        The count of ``True`` entries over all leaves, a Python int.

    Examples:
        >>> import jax.numpy as jnp
        >>> selected_count({"b": jnp.asarray([True]), "w": jnp.asarray([[True, False], [True, False]])})
        3
    """
    return sum(int(jnp.sum(leaf)) for leaf in jax.tree.leaves(mask_tree))


def random_selection(key: jax.Array, like: PyTree, count, *, where: tree_lib.Where = None) -> PyTree:
    """Exactly ``count`` scalars of ``like``, drawn uniformly without replacement, as a bool tree.

    The scalars of the leaves ``where`` allows are ordered by one uniform random permutation of their
    flattened concatenation (:func:`jax.random.permutation`), and the first ``count`` positions are kept,
    so every subset of that size is equally likely and the count is exact. Leaves outside ``where`` are all
    ``False``.

    Args:
        key: a JAX PRNG key; the same key gives the same selection.
        like: any pytree of arrays (parameters, importances, a selection); only shapes are read.
        count: how many scalars to keep, 0 ≤ count ≤ the allowed scalars; may be traced under ``jit``.
        where: selector of the leaves that may be selected (``unlearnx.tree`` syntax; default: all but batch
            statistics).

    Returns:
        A tree of bool arrays with ``like``'s structure and shapes.

    Raises:
        ValueError: a concrete ``count`` that is negative, not an integer, or larger than the allowed scalars.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> like = {"b": jnp.zeros(2), "w": jnp.zeros((2, 3))}
        >>> chosen = random_selection(jax.random.key(0), like, 4)
        >>> selected_count(chosen), chosen["w"].shape, chosen["w"].dtype
        (4, (2, 3), dtype('bool'))
    """
    allowed = jax.tree.leaves(tree_lib.trainable(like, where))
    leaves, treedef = jax.tree.flatten(like)
    sizes = [int(np.prod(np.shape(leaf))) if keep else 0 for leaf, keep in zip(leaves, allowed, strict=True)]
    total = sum(sizes)
    if not isinstance(count, jax.core.Tracer):
        if isinstance(count, bool) or not float(count).is_integer():
            raise ValueError(f"count must be an integer, got {count!r}")
        if not 0 <= int(count) <= total:
            raise ValueError(f"count must be in [0, {total}] (the selectable scalars), got {count!r}")
    order = jax.random.permutation(key, total)
    flat = jnp.zeros(total, bool).at[order].set(jnp.arange(total) < count)
    pieces, start = [], 0
    for leaf, size in zip(leaves, sizes, strict=True):
        shape = np.shape(leaf)
        pieces.append(flat[start : start + size].reshape(shape) if size else jnp.zeros(shape, bool))
        start += size
    return jax.tree.unflatten(treedef, pieces)


def selected_fraction(mask_tree: PyTree) -> float:
    """Fraction of scalars a bool selection tree keeps, Σᵢ selectedᵢ / (number of scalars).

    Args:
        mask_tree: a tree of bool (or 0/1) arrays, e.g. from :func:`selection`.

    Returns:
        The fraction in [0, 1], a Python float (0 for a tree without scalars).

    Examples:
        >>> import jax.numpy as jnp
        >>> selected_fraction({"b": jnp.asarray([True]), "w": jnp.asarray([[True, False], [True, False]])})
        0.6
    """
    leaves = jax.tree.leaves(mask_tree)
    total = sum(int(jnp.size(leaf)) for leaf in leaves)
    return sum(int(jnp.sum(leaf)) for leaf in leaves) / max(total, 1)


class MaskedUpdatesState(NamedTuple):
    """The optimizer state of :func:`masked_updates`: the selection the updates are multiplied by.

    Attributes:
        mask: the selection tree, bool arrays with the parameters' structure and shapes.

    Examples:
        >>> import jax.numpy as jnp
        >>> state = masked_updates({"w": jnp.asarray([1, 0])}).init({"w": jnp.zeros(2)})
        >>> isinstance(state, MaskedUpdatesState), state.mask["w"].tolist()  # 0/1 stored as bool
        (True, [True, False])
    """

    mask: PyTree


def masked_updates(mask_tree: PyTree) -> optax.GradientTransformationExtraArgs:
    """An optax transform that zeroes updates where ``mask_tree`` is ``False``: uᵢ ← uᵢ · maskᵢ.

    Unlike ``optax.masked`` (one flag per leaf) the mask is per element. Chain it *after* the optimizer so
    that neither the step nor weight decay moves an unselected parameter.

    Args:
        mask_tree: bool (or 0/1) arrays with the parameters' structure and shapes.

    Returns:
        A ``GradientTransformationExtraArgs``; ``init(params)`` checks the structure and raises ``ValueError``
        naming the first mismatching path, and ``update`` checks the updates the same way.

    Raises:
        ValueError: a concrete mask leaf holding anything but 0 and 1 (a 0.5 mask is not a selection), naming
            the path and the value.
        TypeError: a mask leaf that is neither boolean nor numeric.

    Examples:
        >>> import jax.numpy as jnp
        >>> transform = masked_updates({"w": jnp.asarray([True, False, True])})
        >>> params = {"w": jnp.zeros(3)}
        >>> updates, _ = transform.update({"w": jnp.asarray([1.0, 2.0, 3.0])}, transform.init(params), params)
        >>> updates["w"].tolist()
        [1.0, 0.0, 3.0]
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask_tree)[0]:
        checks.check_binary(f"mask_tree[{checks.path_str(path)!r}]", leaf)

    def init_fn(params):
        tree_lib.check_same_structure(params, mask_tree, names=("params", "mask_tree"))
        return MaskedUpdatesState(jax.tree.map(lambda m: jnp.asarray(m, bool), mask_tree))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        tree_lib.check_same_structure(updates, state.mask, names=("updates", "mask_tree"))
        masked = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, state.mask)
        return masked, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def localized(
    optimizer: optax.GradientTransformation, mask_tree: PyTree
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` restricted to the selection: ``optax.chain(optimizer, masked_updates(mask_tree))``.

    Parameter i moves by the optimizer's update uᵢ where ``mask_tree`` selects it and stays put elsewhere.

    Args:
        optimizer: any optax transformation (its state and weight decay see every parameter).
        mask_tree: bool (or 0/1) arrays with the parameters' structure and shapes (e.g. :func:`selection`).

    Returns:
        The chained ``GradientTransformationExtraArgs``; its state is a pair: the optimizer's state and a
        :class:`MaskedUpdatesState`.

    Raises:
        ValueError, TypeError: as :func:`masked_updates`, for a mask that is not a selection.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> opt = localized(optax.sgd(0.1), {"w": jnp.asarray([True, False])})
        >>> params = {"w": jnp.ones(2)}
        >>> updates, _ = opt.update({"w": jnp.ones(2)}, opt.init(params), params)  # gradient 1 everywhere
        >>> optax.apply_updates(params, updates)["w"].tolist()  # 1 − 0.1 · 1 where selected
        [0.9, 1.0]
    """
    return optax.chain(optimizer, masked_updates(mask_tree))


def importances(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    forget_batches: Iterable[PyTree],
    full_batches: Iterable[PyTree],
    *,
    estimator: fisher.Estimator = "empirical",
    chunk_size: int | None = None,
) -> tuple[PyTree, PyTree]:
    """The diagonal importances (I_f, I_D) that :func:`selection` compares, from the forget and the full data.

    Each is :func:`unlearnx.fisher.diagonal` of ``loss_fn`` at ``params``; with the default ``"empirical"``
    estimator, I[i] = mean over examples of (∂ℓ/∂θᵢ)².

    Args:
        loss_fn: ``loss_fn(params, batch) -> [B]`` per-example losses (row i depends on example i only).
        params: the parameter tree (floating leaves).
        forget_batches: the batches of the forget documents (for I_f).
        full_batches: the batches of the clean corpus (for I_D).
        estimator: ``"empirical"``, ``"batch_sq"`` or ``"batch_abs"`` (see :mod:`unlearnx.fisher`).
        chunk_size: for ``"empirical"``, the per-example gradients materialised at once (``None``: a whole
            batch).

    Returns:
        ``(forget_importance, full_importance)``, float32 trees with ``params``' structure.

    Raises:
        ValueError, TypeError: as :func:`unlearnx.fisher.diagonal` (e.g. no batches, an unknown estimator).

    Examples:
        >>> import jax.numpy as jnp
        >>> loss = lambda p, batch: batch["x"] @ p["w"]  # ∂ℓᵢ/∂w = xᵢ, so I = mean of xᵢ²
        >>> forget = [{"x": jnp.asarray([[2.0, 0.0]])}]
        >>> full = [{"x": jnp.asarray([[1.0, 1.0], [1.0, 0.0]])}]
        >>> i_f, i_d = importances(loss, {"w": jnp.ones(2)}, forget, full)
        >>> i_f["w"].tolist(), i_d["w"].tolist(), selection(i_f, i_d, alpha=2.0)["w"].tolist()
        ([4.0, 0.0], [1.0, 0.5], [True, False])
    """
    forget = fisher.diagonal(loss_fn, params, forget_batches, estimator=estimator, chunk_size=chunk_size)
    full = fisher.diagonal(loss_fn, params, full_batches, estimator=estimator, chunk_size=chunk_size)
    return forget, full
