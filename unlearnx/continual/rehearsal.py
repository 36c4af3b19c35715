"""Rehearsal schedules: how a fixed budget of replayed examples is split over past tasks.

After training task k, past task i < k (last trained or rehearsed at task ``last_seen[i]``, so
Δtᵢ = k − last_seen[i]) gets the weight

    power_law:    wᵢ = (Δtᵢ + 1)^(−d)          (Anderson & Schooler's need-odds; d = ``exponent``)
    exponential:  wᵢ = exp(−λ·Δtᵢ)              (λ = ``rate``)
    uniform:      wᵢ = 1
    none:         no rehearsal,

and nᵢ = B·wᵢ/Σⱼwⱼ examples, rounded by largest remainder so that Σ nᵢ = B exactly (ties go to the more
recent task, then the lower index). Every kind spends the same budget B, which is what makes comparing them
fair; d = 0 and λ = 0 reduce to uniform.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np

KINDS = ("power_law", "exponential", "uniform", "none")

__all__ = ["KINDS", "rehearsal_counts"]


def _weights(kind: str, age: jnp.ndarray, exponent, rate) -> jnp.ndarray:
    if kind == "power_law":
        return (age + 1.0) ** (-jnp.asarray(exponent, jnp.float32))
    if kind == "exponential":
        return jnp.exp(-jnp.asarray(rate, jnp.float32) * age)
    return jnp.ones_like(age)


def rehearsal_counts(
    kind: str,
    *,
    current_task: int,
    last_seen,
    budget: int,
    exponent: float = 1.0,
    rate: float = 1.0,
) -> jnp.ndarray:
    """Examples to rehearse from each past task (see the module docstring); an int32 array of length
    ``current_task`` summing exactly to ``budget`` (zeros for ``"none"``). ``last_seen`` may be traced.

    Raises:
      ValueError: unknown kind; ``budget`` not a non-negative integer; ``current_task`` 0 with a positive
        budget; ``last_seen`` not one entry per past task; a negative exponent or rate.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    if not isinstance(current_task, numbers.Integral) or current_task < 0:
        raise ValueError(f"current_task must be a non-negative integer, got {current_task!r}")
    if current_task == 0 and budget > 0 and kind != "none":
        raise ValueError("current_task 0 has no past task to rehearse, but the budget is positive")
    shape = np.shape(last_seen)
    if shape != (current_task,):
        raise ValueError(
            f"last_seen must hold one entry per past task, shape ({current_task},), got shape {shape}"
        )
    for name, value in (("exponent", exponent), ("rate", rate)):
        if isinstance(value, numbers.Real) and (value < 0 or not np.isfinite(value)):
            raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
    if kind == "none" or current_task == 0:
        return jnp.zeros(current_task, jnp.int32)
    age = current_task - jnp.asarray(last_seen, jnp.float32)
    weights = _weights(kind, age, exponent, rate)
    exact = budget * weights / jnp.sum(weights)
    floor = jnp.floor(exact)
    remainder = budget - jnp.sum(floor).astype(jnp.int32)
    # Largest remainder first; among equal remainders the more recent task, then the lower index.
    order = jnp.lexsort((jnp.arange(current_task), age, -(exact - floor)))
    extra = (
        jnp.zeros(current_task, jnp.int32)
        .at[order]
        .set((jnp.arange(current_task) < remainder).astype(jnp.int32))
    )
    return floor.astype(jnp.int32) + extra
