"""Input validation shared by the erasure transforms (private).

Checks run on concrete values only: under ``jax.jit`` the arguments are tracers, whose shapes are still
checked but whose values (finiteness, sign) are not.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_kernel", "as_rows", "check_finite", "check_scale", "flat32"]


def check_scale(name: str, value: Any, *, positive: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite scalar ≥ 0 (> 0 when ``positive``)."""
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    scalar = float(array)
    if not math.isfinite(scalar) or scalar < 0 or (positive and scalar == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@jax.jit
def _count_nonfinite(array: jax.Array) -> jax.Array:
    return jnp.sum(~jnp.isfinite(array))


def check_finite(name: str, array: Any) -> None:
    """Raises ``ValueError`` naming ``name``, the count and one bad value when ``array`` has NaN/inf."""
    if isinstance(array, jax.core.Tracer):
        return
    with jax.ensure_compile_time_eval():  # a concrete array closed over by an outer jit is still checked
        bad = int(_count_nonfinite(jnp.asarray(array)))
    if bad:
        values = np.asarray(array, dtype=np.float64).ravel()
        example = values[~np.isfinite(values)][0]
        raise ValueError(f"{name} must be finite, found {float(example)} ({bad} non-finite entries)")


def _as_float(name: str, array: Any) -> jax.Array:
    array = jnp.asarray(array)
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def as_rows(name: str, keys: Any, d_in: int, *, allow_empty: bool) -> jax.Array:
    """Validates a ``[rows, d_in]`` key matrix and returns it as an array (``None`` → zero rows)."""
    if keys is None:
        if allow_empty:
            return jnp.zeros((0, d_in), jnp.float32)
        raise ValueError(f"{name} must not be None")
    keys = _as_float(name, keys)
    if keys.ndim != 2:
        raise ValueError(f"{name} must be a [rows, d_in] matrix, got shape {keys.shape}")
    if keys.shape[1] != d_in:
        raise ValueError(
            f"{name} has {keys.shape[1]} columns but the kernel's input dimension d_in is {d_in} "
            f"(keys are rows [rows, d_in]; kernels are in Flax layout (d_in, d_out))"
        )
    if keys.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {keys.shape}); there is nothing to erase")
    check_finite(name, keys)
    return keys


def as_kernel(name: str, kernel: Any) -> jax.Array:
    """Validates a floating-point Flax-layout kernel ``(d_in, *out)`` and returns it as an array."""
    kernel = jnp.asarray(kernel)
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {kernel.dtype}")
    if kernel.ndim < 2:
        raise ValueError(f"{name} must be a kernel of shape (d_in, d_out, ...), got shape {kernel.shape}")
    if kernel.shape[0] == 0 or math.prod(kernel.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty dimension: shape {kernel.shape}")
    check_finite(name, kernel)
    return kernel


def flat32(kernel: jax.Array) -> jax.Array:
    """A ``(d_in, *out)`` kernel as the float32 matrix ``(d_in, prod(out))``."""
    return kernel.reshape(kernel.shape[0], -1).astype(jnp.float32)
