"""Sparsity and drop-fraction schedules, as jit-friendly functions of the (possibly traced) step."""

from __future__ import annotations

import jax.numpy as jnp

from unlearnx import _validation as checks

__all__ = ["cosine_drop_fraction", "cubic_sparsity"]


def cubic_sparsity(step, *, initial: float, final: float, begin_step: int, end_step: int, frequency: int):
    """Zhu–Gupta gradual sparsity with an initial value, evaluated at pruning events.

    With k = ⌊step/ΔT⌋, k₀ = ⌊t₀/ΔT⌋, k_f = ⌊t_f/ΔT⌋ and K = k_f − k₀ (ΔT = ``frequency``):

        s(step) = s_i                                   for k < k₀,
        s(step) = s_f + (s_i − s_f)·(1 − (k − k₀)/K)³   for k₀ ≤ k ≤ k_f − 1,
        s(step) = s_f                                   for k ≥ k_f.

    ``step`` may be traced; the other arguments are static hyper-parameters.

    Raises:
      ValueError: a sparsity outside [0, 1), a negative ``begin_step``, ``end_step <= begin_step``, a
        non-positive frequency, or fewer than one pruning event between begin and end.
      TypeError: a traced or non-numeric hyper-parameter, or non-integer steps.
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


def cosine_drop_fraction(step, *, initial: float = 0.5, minimum: float = 0.005, total_steps: int):
    """GraNet's death rate p_t = η_min + ½(p₀ − η_min)(1 + cos(π t / T)), t clipped to [0, T].

    ``step`` may be traced; ``initial``, ``minimum`` (in [0, 1], minimum ≤ initial) and ``total_steps`` ≥ 1
    are static hyper-parameters (``ValueError`` out of range, ``TypeError`` when traced).
    """
    checks.static_int("total_steps", total_steps, low=1, high=checks.INT32_MAX)
    checks.static_number("initial", initial, low=0.0, high=1.0)
    checks.static_number("minimum", minimum, low=0.0, high=1.0)
    if not 0.0 <= minimum <= initial <= 1.0:
        raise ValueError(f"need 0 <= minimum <= initial <= 1, got minimum={minimum}, initial={initial}")
    checks.check_numbers("step", step)
    t = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, total_steps)
    return minimum + 0.5 * (initial - minimum) * (1.0 + jnp.cos(jnp.pi * t / total_steps))
