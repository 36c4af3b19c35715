"""The per-example losses that :func:`unlearnx.fisher.diagonal` takes besides a task loss: labels sampled
from the model (the true Fisher) and LFSSD's label-free output norm. Public through :mod:`unlearnx.fisher`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from unlearnx import _losses
from unlearnx._typing import PyTree

LossFn = Callable[[PyTree, PyTree], jax.Array]


def _example_fingerprints(batch: PyTree) -> jax.Array:
    """A uint32 hash per example of all the batch's leaves, so sampling is tied to the example itself.

    The same example hashes the same whether it is evaluated alone (per-example gradients) or inside a
    batch, which keeps the sampled labels identical across the estimators.
    """
    hashes = None
    for leaf in jax.tree.leaves(batch):
        flat = jnp.reshape(leaf, (leaf.shape[0], -1)).astype(jnp.float32)
        bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
        weights = (2 * jnp.arange(flat.shape[1], dtype=jnp.uint32) + 1) * jnp.uint32(2654435761)
        leaf_hash = jnp.sum(bits * weights, axis=1, dtype=jnp.uint32)
        hashes = leaf_hash if hashes is None else hashes * jnp.uint32(31) + leaf_hash
    return hashes


def sampled_label_loss(logits_fn: Callable[[PyTree, PyTree], jax.Array], rng: jax.Array) -> LossFn:
    """A per-example loss whose labels are drawn from the model's own predictive distribution.

    ℓᵢ(θ) = −log p_θ(ŷᵢ | xᵢ) with ŷᵢ ~ p_θ(· | xᵢ) (sampled without gradient). Used with the
    ``"empirical"`` estimator this is a Monte-Carlo estimate of the true Fisher diagonal
    E_x E_{y~p_θ}[(∂ log p_θ(y|x)/∂θ)²]. Each example's sample uses ``rng`` folded with a hash of the
    example's contents, so it does not depend on batching.

    Args:
        logits_fn: ``logits_fn(params, batch) -> [B, C]`` logits.
        rng: a ``jax.random.key``.

    Returns:
        ``loss_fn(params, batch) -> [B]``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> loss_fn = sampled_label_loss(lambda params, batch: batch @ params, jax.random.key(0))
        >>> losses = loss_fn(jnp.zeros((3, 4)), jnp.ones((5, 3)))  # uniform p_θ: every label costs ln 4
        >>> bool(jnp.allclose(losses, jnp.log(4.0)))
        True
    """

    def loss_fn(params: PyTree, batch: PyTree) -> jax.Array:
        logits = logits_fn(params, batch)
        if jnp.ndim(logits) != 2:
            raise ValueError(
                f"sampled_label_loss: logits_fn must return [B, C] logits, got {jnp.shape(logits)}"
            )
        keys = jax.vmap(lambda h: jax.random.fold_in(rng, h))(_example_fingerprints(batch))
        labels = jax.vmap(jax.random.categorical)(keys, jax.lax.stop_gradient(logits))
        return _losses.token_nll(logits, labels)

    return loss_fn


def output_norm_loss(logits_fn: Callable[[PyTree, PyTree], jax.Array]) -> LossFn:
    """LFSSD's label-free per-example loss ℓᵢ(θ) = ‖f_θ(xᵢ)‖₂² over the model outputs.

    With ``diagonal(..., estimator="batch_abs")`` it gives LFSSD's importance, which needs no labels.

    Args:
        logits_fn: ``logits_fn(params, batch) -> [B, …]`` outputs.

    Returns:
        ``loss_fn(params, batch) -> [B]``, the squared L2 norm of each example's outputs.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss_fn = output_norm_loss(lambda params, batch: batch * params)
        >>> loss_fn(2.0, jnp.array([[1.0, 0.0], [3.0, 4.0]])).tolist()
        [4.0, 100.0]

    References:
        Foster, Schoepf & Brintrup, `Loss-Free Machine Unlearning <https://arxiv.org/abs/2402.19308>`_,
        ICLR 2024 Tiny Papers.
    """

    def loss_fn(params: PyTree, batch: PyTree) -> jax.Array:
        outputs = logits_fn(params, batch)
        return jnp.sum(jnp.square(outputs.reshape(outputs.shape[0], -1)), axis=1)

    return loss_fn
