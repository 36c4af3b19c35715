"""Sparsity and drop-fraction schedules, as jit-friendly functions of the (possibly traced) step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks

__all__ = ["cosine_drop_fraction", "cubic_sparsity"]


def cubic_sparsity(
    step, *, initial: float, final: float, begin_step: int, end_step: int, frequency: int
) -> jax.Array:
    """Zhu–Gupta gradual sparsity with an initial value, evaluated at pruning events.

    With k = ⌊step/ΔT⌋, k₀ = ⌊t₀/ΔT⌋, k_f = ⌊t_f/ΔT⌋ and K = k_f − k₀ (ΔT = ``frequency``):

        s(step) = s_i                                   for k < k₀,
        s(step) = s_f + (s_i − s_f)·(1 − (k − k₀)/K)³   for k₀ ≤ k ≤ k_f − 1,
        s(step) = s_f                                   for k ≥ k_f.

    Args:
        step: the step (may be traced).
        initial: s_i ∈ [0, 1) (GraNet's initial sparsity; 0 is Zhu–Gupta's GMP).
        final: s_f ∈ [0, 1).
        begin_step: t₀ ≥ 0.
        end_step: t_f > t₀.
        frequency: ΔT ≥ 1, the steps between pruning events.

    Returns:
        s(step), a float array of ``step``'s shape.

    Raises:
        ValueError: a sparsity outside [0, 1), a negative ``begin_step``, ``end_step <= begin_step``, a
            non-positive frequency, or fewer than one pruning event between begin and end.
        TypeError: a traced or non-numeric hyper-parameter, or non-integer steps.

    Examples:
        >>> import jax.numpy as jnp
        >>> steps = jnp.array([0, 10, 20, 30, 40])  # k₀ = 1, K = 2
        >>> cubic_sparsity(steps, initial=0.0, final=0.8, begin_step=10, end_step=30, frequency=10).tolist()
        [0.0, 0.0, 0.7..., 0.8..., 0.8...]

    References:
        Zhu & Gupta, `To prune, or not to prune <https://arxiv.org/abs/1710.01878>`_, 2017; Liu et al.,
        `Sparse Training via Boosting Pruning Plasticity with Neuroregeneration
        <https://arxiv.org/abs/2106.10404>`_, NeurIPS 2021 (s_i).
    """
    for name, value in (("initial", initial), ("final", final)):
        checks.static_number(name, value, low=0.0, high=1.0, high_open=True)
    checks.static_int("frequency", frequency, low=1, high=checks.INT32_MAX)
    checks.static_int("begin_step", begin_step, low=0, high=checks.INT32_MAX)
    checks.static_int("end_step", end_step, low=0, high=checks.INT32_MAX)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be greater than begin_step ({begin_step})")
    first, last = begin_step // frequency, end_step // frequency
    if last <= first:
        raise ValueError(
            f"no pruning event between begin_step {begin_step} and end_step {end_step} "
            f"at frequency {frequency}"
        )
    checks.check_numbers("step", step)
    k = jnp.asarray(step) // frequency
    progress = jnp.clip((k - first) / (last - first), 0.0, 1.0)
    ramp = final + (initial - final) * (1.0 - progress) ** 3
    return jnp.where(k < first, initial, jnp.where(k >= last, final, ramp))


def cosine_drop_fraction(
    step, *, initial: float = 0.5, minimum: float = 0.005, total_steps: int
) -> jax.Array:
    """GraNet's death rate p_t = η_min + ½(p₀ − η_min)(1 + cos(π t / T)), t clipped to [0, T].

    Args:
        step: t (may be traced; the value is float32, float64 with ``jax_enable_x64``).
        initial: p₀ ∈ [0, 1].
        minimum: η_min ∈ [0, p₀].
        total_steps: T ≥ 1.

    Returns:
        p_t, a float array of ``step``'s shape.

    Raises:
        ValueError: hyper-parameters out of range.
        TypeError: a traced hyper-parameter.

    Examples:
        >>> import jax.numpy as jnp
        >>> p = cosine_drop_fraction(jnp.array([0, 50, 100, 200]), initial=0.5, minimum=0.1, total_steps=100)
        >>> p.tolist()
        [0.5, 0.3, 0.1, 0.1]

    References:
        Liu et al., `Sparse Training via Boosting Pruning Plasticity with Neuroregeneration
        <https://arxiv.org/abs/2106.10404>`_, NeurIPS 2021.
    """
    checks.static_int("total_steps", total_steps, low=1, high=checks.INT32_MAX)
    checks.static_number("initial", initial, low=0.0, high=1.0)
    checks.static_number("minimum", minimum, low=0.0, high=1.0)
    if not 0.0 <= minimum <= initial <= 1.0:
        raise ValueError(f"need 0 <= minimum <= initial <= 1, got minimum={minimum}, initial={initial}")
    checks.check_numbers("step", step)
    t = jnp.clip(jnp.asarray(step, jnp.result_type(float)), 0.0, total_steps)  # float64 with x64
    return minimum + 0.5 * (initial - minimum) * (1.0 + jnp.cos(jnp.pi * t / total_steps))


# ---------------------------------------------------------------------------------------------------------
# Exact per-event values (private): the schedules in Python float64 at the steps where masks change, looked
# up by the traced step, so that counts derived from them are exact whatever the device's float width.

_MAX_EVENTS = 1 << 16  # larger tables fall back to the traced schedule


def _cubic_value(step: int, *, initial: float, final: float, begin_step: int, end_step: int, frequency: int):
    """:func:`cubic_sparsity` at a Python int step, in Python float64."""
    k, first, last = step // frequency, begin_step // frequency, end_step // frequency
    if k < first:
        return float(initial)
    if k >= last:
        return float(final)
    return final + (initial - final) * (1.0 - (k - first) / (last - first)) ** 3


def _cosine_value(step: int, *, initial: float, minimum: float, total_steps: int) -> float:
    """:func:`cosine_drop_fraction` at a Python int step, in Python float64."""
    t = min(max(step, 0), total_steps)
    return minimum + 0.5 * (initial - minimum) * (1.0 + math.cos(math.pi * t / total_steps))


def _event_steps(frequency: int, begin: int, end: int) -> range | None:
    """The steps t ≥ 1 with t mod ΔT = 0 in [begin, end], or ``None`` when there are over ``_MAX_EVENTS``."""
    first = -(-max(begin, 1) // frequency) * frequency
    steps = range(first, end + 1, frequency)
    return steps if len(steps) <= _MAX_EVENTS else None


def _lookup(table: np.ndarray, steps: range, step: jax.Array) -> jax.Array:
    """``table[i]`` for the event ``steps[i]`` at (or, clipped, nearest to) the traced ``step``."""
    index = jnp.clip((jnp.asarray(step) - steps.start) // steps.step, 0, max(len(steps) - 1, 0))
    return jnp.asarray(table)[index]
