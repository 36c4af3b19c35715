"""Per-example scores of classifier logits, computed stably in float32 (host or device arrays).

Non-finite logits are never scored: :func:`accuracy` of logits holding NaN/inf is NaN, and :func:`entropy` /
:func:`cross_entropy` are NaN on the rows that hold one, so a diverged model is reported as diverged
rather than as the accuracy of ``argmax`` of NaN (class 0). Labels must be class ids in [0, C): checked when
concrete (−1 would otherwise wrap around to the last class and C would give NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _losses
from unlearnx import _validation as checks

__all__ = ["accuracy", "cross_entropy", "entropy"]


def _check(logits, labels=None) -> None:
    if np.ndim(logits) != 2:
        raise ValueError(f"logits must have shape [N, C], got {np.shape(logits)}")
    if labels is not None:
        if np.shape(labels) != np.shape(logits)[:1]:
            raise ValueError(f"labels must have shape [N] = {np.shape(logits)[:1]}, got {np.shape(labels)}")
        checks.check_ids("labels", labels, np.shape(logits)[1], what="class labels")


def _finite_rows(logits) -> jax.Array:
    return jnp.all(jnp.isfinite(jnp.asarray(logits, jnp.float32)), axis=1)


def accuracy(logits: jax.Array, labels: jax.Array) -> float:
    """Fraction of rows whose argmax equals the label, (1/N) Σᵢ [argmax_c zᵢ,c = yᵢ].

    Args:
        logits: ``[N, C]`` classifier logits (host or device array).
        labels: ``[N]`` integer class ids in [0, C).

    Returns:
        The accuracy as a Python float; NaN for an empty set (no examples, no accuracy) and for logits
        holding any NaN/inf (a diverged model has no accuracy: ``argmax`` of NaN would score class 0).

    Raises:
        ValueError: bad shapes, or labels outside [0, C) (checked when concrete).
        TypeError: non-integer labels.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import eval
        >>> eval.accuracy(np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), np.array([0, 1, 1]))
        0.6666666666666666
    """
    _check(logits, labels)
    if len(labels) == 0:
        return float("nan")
    logits = np.asarray(logits)
    if not np.all(np.isfinite(logits)):
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def entropy(logits: jax.Array) -> np.ndarray:
    """Shannon entropy of softmax(logits) per row, H = −Σ_c p_c log p_c (0 log 0 = 0), in nats.

    Args:
        logits: ``[N, C]`` classifier logits (host or device array).

    Returns:
        A float32 NumPy array ``[N]``; NaN on rows with a non-finite logit.

    Raises:
        ValueError: logits not of shape ``[N, C]``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import eval
        >>> h = eval.entropy(np.array([[0.0, 0.0], [100.0, 0.0]]))
        >>> np.allclose(h, [np.log(2), 0.0])  # uniform over 2 classes: log 2; certain: 0
        True
    """
    _check(logits)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=1)
    values = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=1)
    return np.asarray(jnp.where(_finite_rows(logits), values, jnp.nan))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> np.ndarray:
    """Per-row cross-entropy ℓᵢ = −log softmax(zᵢ)[yᵢ], in nats.

    Args:
        logits: ``[N, C]`` classifier logits (host or device array).
        labels: ``[N]`` integer class ids in [0, C).

    Returns:
        A float32 NumPy array ``[N]``; NaN on rows with a non-finite logit.

    Raises:
        ValueError: bad shapes, or labels outside [0, C) (checked when concrete).
        TypeError: non-integer labels.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import eval
        >>> loss = eval.cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
        >>> np.allclose(loss, np.log(4))  # uniform over 4 classes
        True
    """
    _check(logits, labels)
    values = _losses.token_nll(jnp.asarray(logits), jnp.asarray(labels))
    return np.asarray(jnp.where(_finite_rows(logits), values, jnp.nan))
