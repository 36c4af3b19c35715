"""Per-example scores of classifier logits, computed stably in float32 (host or device arrays)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["accuracy", "cross_entropy", "entropy"]


def _check(logits, labels=None) -> None:
    if np.ndim(logits) != 2:
        raise ValueError(f"logits must have shape [N, C], got {np.shape(logits)}")
    if labels is not None and np.shape(labels) != np.shape(logits)[:1]:
        raise ValueError(f"labels must have shape [N] = {np.shape(logits)[:1]}, got {np.shape(labels)}")


def accuracy(logits: jax.Array, labels: jax.Array) -> float:
    """Fraction of rows whose argmax equals the label; NaN for an empty set (no examples, no accuracy)."""
    _check(logits, labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == np.asarray(labels)))


def entropy(logits: jax.Array) -> np.ndarray:
    """Shannon entropy of softmax(logits) per row, H = −Σ_c p_c log p_c (0 log 0 = 0), in nats."""
    _check(logits)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=1)
    return np.asarray(-jnp.sum(jnp.exp(log_probs) * log_probs, axis=1))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> np.ndarray:
    """Per-row cross-entropy −log softmax(logits)[label]."""
    _check(logits, labels)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=1)
    return np.asarray(-jnp.take_along_axis(log_probs, jnp.asarray(labels)[:, None], axis=1)[:, 0])
