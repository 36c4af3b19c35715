"""Rehearsal schedules: how a fixed budget of replayed examples is split over past tasks.

After training task k, past task i < k (last trained or rehearsed at task ``last_seen[i]``, so
Δtᵢ = k − last_seen[i] ≥ 0) gets the weight

    power_law:    wᵢ = (Δtᵢ + 1)^(−d)          (Anderson & Schooler's need-odds; d = ``exponent``)
    exponential:  wᵢ = exp(−λ·Δtᵢ)              (λ = ``rate``)
    uniform:      wᵢ = 1
    none:         no rehearsal,

and nᵢ = B·wᵢ/Σⱼwⱼ examples, rounded by largest remainder so that Σ nᵢ = B exactly (ties go to the more
recent task, then the lower index). Every kind spends the same budget B, which is what makes comparing them
fair; d = 0 and λ = 0 reduce to uniform.

The counts always sum to B exactly. Two computations give them:

* the float32 quotas B·wᵢ/Σⱼwⱼ of earlier versions, used when B < 2²⁴ (exact in float32) and their result is
  valid (Σw a normal positive number, every quota finite, 0 ≤ B − Σ⌊quota⌋ ≤ k), so that the counts of
  every earlier run stay identical;
* otherwise float64 shares in log space, relative to the most recent task, wᵢ/w_max =
  exp(log wᵢ − log w_max), which never all underflow (λ = 100 gives the most recent task everything rather
  than 0/0), rounded in exact integer arithmetic (Python ints), so the counts sum to B for every budget up
  to 2⁶³ − 1, with no float32 rounding and no int32 overflow.
"""

from __future__ import annotations

import numbers
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks

KINDS = ("power_law", "exponential", "uniform", "none")
Kind = Literal["power_law", "exponential", "uniform", "none"]
_INT32_MAX = 2**31 - 1
_FLOAT32_EXACT = 2**24
_FLOAT32_MAX = float(np.finfo(np.float32).max)

__all__ = ["KINDS", "rehearsal_counts"]


def _relative_log_weights(kind: str, age: np.ndarray, exponent: float, rate: float) -> np.ndarray:
    """log wᵢ − log w_max in float64 (0 for the most recent task, −inf where a weight underflows)."""
    nearest = age.min()
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "power_law":
            relative = -exponent * (np.log1p(age) - np.log1p(nearest))
        elif kind == "exponential":
            relative = -rate * (age - nearest)
        else:
            relative = np.zeros_like(age)
    return np.where(age == nearest, 0.0, relative)  # 0·inf never makes the nearest task NaN


def _largest_remainder(shares: np.ndarray, age: np.ndarray, budget: int) -> list[int]:
    """Σ = ``budget`` exactly: floors of B·share, then the units left over by largest remainder (ties: the
    more recent task, then the lower index). Integer bookkeeping is in Python ints (any size)."""
    quotas = shares * float(budget)
    floors = np.floor(quotas)
    counts = [min(int(f), budget) for f in floors]
    left = budget - sum(counts)
    order = np.lexsort((np.arange(len(shares)), age, -(quotas - floors)))
    # float64 quotas of budgets beyond 2⁵³ can be off by a few units: spread or take back the difference
    while left:
        for index in order if left > 0 else order[::-1]:
            if left > 0:
                step = max(left // len(order), 1)
                counts[index] += step
                left -= step
            elif counts[index] > 0:
                step = min(counts[index], max(-left // len(order), 1))
                counts[index] -= step
                left += step
            if not left:
                break
    return counts


def _check_last_seen(last_seen, current_task: int) -> np.ndarray:
    seen = np.asarray(last_seen, np.float64)
    bad = ~np.isfinite(seen) | (seen < 0) | (seen > current_task) | (seen != np.round(seen))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"last_seen must hold task indices in [0, current_task = {current_task}] (a task cannot be seen "
            f"in the future), found {float(seen[index])!r} at index {index}"
        )
    return seen


def _counts_host(kind: str, current_task: int, last_seen, budget: int, exponent: float, rate: float):
    """The float64 log-space counts (see the module docstring), as Python ints."""
    age = current_task - _check_last_seen(last_seen, current_task)
    weights = np.exp(_relative_log_weights(kind, age, exponent, rate))
    return _largest_remainder(weights / weights.sum(), age, budget)


def _float32_counts(kind: str, age: jax.Array, budget: int, exponent: float, rate: float):
    """The float32 largest-remainder counts of earlier versions and whether they are valid (see the module
    docstring); ``age`` is float32 ``[k]``, possibly traced."""
    size = age.shape[0]
    if kind == "power_law":
        weights = (age + 1.0) ** (-jnp.asarray(exponent, jnp.float32))
    elif kind == "exponential":
        weights = jnp.exp(-jnp.asarray(rate, jnp.float32) * age)
    else:
        weights = jnp.ones_like(age)
    total = jnp.sum(weights)
    exact = budget * weights / total
    floor = jnp.floor(exact)
    remainder = budget - jnp.sum(floor).astype(jnp.int32)
    # Largest remainder first; among equal remainders the more recent task, then the lower index.
    order = jnp.lexsort((jnp.arange(size), age, -(exact - floor)))
    extra = jnp.zeros(size, jnp.int32).at[order].set((jnp.arange(size) < remainder).astype(jnp.int32))
    valid = (
        (total >= jnp.finfo(jnp.float32).tiny)
        & jnp.all(jnp.isfinite(exact))
        & (remainder >= 0)
        & (remainder <= size)
        & jnp.all((age >= 0) & (age == jnp.round(age)))
    )
    return floor.astype(jnp.int32) + extra, valid


def _check(kind, current_task, last_seen, budget, exponent, rate) -> tuple[int, int]:
    checks.choice("kind", kind, KINDS)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    if isinstance(current_task, bool) or not isinstance(current_task, numbers.Integral) or current_task < 0:
        raise ValueError(f"current_task must be a non-negative integer, got {current_task!r}")
    budget, current_task = int(budget), int(current_task)
    if current_task == 0 and budget > 0 and kind != "none":
        raise ValueError("current_task 0 has no past task to rehearse, but the budget is positive")
    shape = np.shape(last_seen)
    if shape != (current_task,):
        raise ValueError(
            f"last_seen must hold one entry per past task, shape ({current_task},), got shape {shape}"
        )
    checks.static_number("exponent", exponent, low=0.0)
    checks.static_number("rate", rate, low=0.0)
    return current_task, budget


def rehearsal_counts(
    kind: Kind,
    *,
    current_task: int,
    last_seen,
    budget: int,
    exponent: float = 1.0,
    rate: float = 1.0,
) -> jax.Array | np.ndarray:
    """Examples to rehearse from each past task (see the module docstring).

    Args:
        kind: one of ``KINDS``.
        current_task: k ≥ 0, the number of past tasks.
        last_seen: ``[k]`` task index at which each past task was last trained or rehearsed, in [0, k]. May
            be traced (the allocation then runs on the host through ``jax.pure_callback``; a bad entry raises
            there, surfacing as JAX's runtime error carrying this message).
        budget: B ≥ 0, a Python or NumPy integer (any size up to 2⁶³ − 1).
        exponent: d ≥ 0 of ``"power_law"`` (static).
        rate: λ ≥ 0 of ``"exponential"`` (static).

    Returns:
        The counts, length k, summing exactly to ``budget`` (zeros for ``"none"``): an int32 ``jax.Array``
        for budgets below 2³¹, a NumPy int64 array for larger ones (int32 cannot hold them).

    Raises:
        ValueError: unknown kind; ``budget`` not a non-negative integer; ``current_task`` 0 with a positive
            budget; ``last_seen`` not one entry per past task, or an entry outside [0, current_task] (checked
            when concrete); a negative or non-finite exponent or rate; a traced ``last_seen`` with B ≥ 2³¹
            (int32 cannot hold the counts).
        TypeError: a traced exponent or rate.

    Examples:
        Three past tasks last seen at tasks 0, 1, 2 have Δt = 3, 2, 1; the power law with d = 1 weighs them
        1/4, 1/3, 1/2 (Σ = 13/12), so B = 11 gives quotas 33/13 ≈ 2.54, 44/13 ≈ 3.38, 66/13 ≈ 5.08: the floors
        2, 3, 5 sum to 10 and the one left goes to the largest remainder (task 0):

        >>> from unlearnx import continual
        >>> continual.rehearsal_counts("power_law", current_task=3, last_seen=[0, 1, 2], budget=11).tolist()
        [3, 3, 5]

        Uniform quotas of 10/3 tie, and the one left goes to the most recent task:

        >>> continual.rehearsal_counts("uniform", current_task=3, last_seen=[0, 1, 2], budget=10).tolist()
        [3, 3, 4]
    """
    current_task, budget = _check(kind, current_task, last_seen, budget, exponent, rate)
    if kind == "none" or current_task == 0:
        return jnp.zeros(current_task, jnp.int32)
    exponent, rate = float(exponent), float(rate)

    def exact(seen) -> list[int]:
        return _counts_host(kind, current_task, seen, budget, exponent, rate)

    # the float32 path of earlier versions, where float32 holds the budget and the hyper-parameters
    float32_ok = budget < _FLOAT32_EXACT and max(exponent, rate) <= _FLOAT32_MAX
    if checks.is_traced(last_seen):
        if budget > _INT32_MAX:
            raise ValueError(f"budget {budget} >= 2**31 needs int64 counts: pass a concrete last_seen")
        result = jax.ShapeDtypeStruct((current_task,), jnp.int32)

        def fallback(seen):
            host = lambda s: np.asarray(exact(s), np.int32)  # noqa: E731
            return jax.pure_callback(host, result, seen, vmap_method="sequential")

        if not float32_ok:
            return fallback(last_seen)
        age = current_task - jnp.asarray(last_seen, jnp.float32)
        counts, valid = _float32_counts(kind, age, budget, exponent, rate)
        return jax.lax.cond(valid, lambda seen: counts, fallback, last_seen)
    _check_last_seen(last_seen, current_task)
    if float32_ok:
        age = current_task - jnp.asarray(np.asarray(last_seen), jnp.float32)
        counts, valid = _float32_counts(kind, age, budget, exponent, rate)
        if bool(valid):
            return counts
    counts = exact(last_seen)
    if budget > _INT32_MAX:
        return np.asarray(counts, np.int64)
    return jnp.asarray(np.asarray(counts, np.int32))
