"""Per-token log-probabilities of target tokens, the input of every objective in
:mod:`unlearnx.unlearn.objectives` (which re-exports these functions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unlearnx import _losses
from unlearnx import _validation as checks


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[..., targets]: the log-probability of each target token.

    Args:
        logits: ``[..., V]`` float logits.
        targets: integer token ids with ``logits``' leading shape.

    Returns:
        float32 log-probabilities with ``targets``' shape.

    Raises:
        ValueError: shapes that disagree, or (concrete targets) an id outside [0, V).
        TypeError: non-integer targets.

    Examples:
        >>> token_log_probs(jnp.zeros((2, 4)), jnp.array([0, 3])).tolist()  # uniform: ln(1/4)
        [-1.3862943649291992, -1.3862943649291992]
    """
    if jnp.ndim(logits) < 1 or jnp.shape(logits)[:-1] != jnp.shape(targets):
        raise ValueError(f"targets shape {jnp.shape(targets)} does not match logits {jnp.shape(logits)}[:-1]")
    # take_along_axis would give NaN (zero gradient) or wrap around silently; concrete ids are checked, also
    # when closed over by an outer jit
    checks.check_ids("targets", targets, jnp.shape(logits)[-1], what="token ids")
    return -_losses.token_nll(logits, targets)


def next_token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """logp[b, t] = log P_θ(tokens[b, t+1] | tokens[b, ≤t]) from a causal LM's ``logits`` ``[B, T, V]``.

    Args:
        logits: ``[B, T, V]``, position t predicting token t + 1.
        tokens: int ``[B, T]``.

    Returns:
        float32 ``[B, T − 1]``; pair it with ``mask[:, 1:]`` of a ``[B, T]`` token mask.

    Raises:
        ValueError: shapes that disagree, or (concrete) a token outside [0, V).

    Examples:
        >>> next_token_log_probs(jnp.zeros((1, 3, 4)), jnp.array([[0, 1, 2]])).shape
        (1, 2)
    """
    if jnp.ndim(logits) != 3 or jnp.shape(logits)[:2] != jnp.shape(tokens):
        raise ValueError(
            f"logits {jnp.shape(logits)} must be [B, T, V] with tokens [B, T] = {jnp.shape(tokens)}"
        )
    return token_log_probs(logits[:, :-1], tokens[:, 1:])
