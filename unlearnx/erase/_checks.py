"""Shape helpers and overflow diagnosis shared by the erasure transforms (private).

Values are validated through :mod:`unlearnx._validation`: scales are static hyper-parameters (a traced one
raises ``TypeError``); the finiteness of keys and kernels is checked when they are concrete (under ``jax.jit``
with traced arrays only their shapes are checked); outputs are checked for float32 overflow when concrete.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks

__all__ = ["as_kernel", "as_rows", "check_scale", "flat32", "host64", "overflow_cause"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_scale(name: str, value: Any, *, positive: bool = False) -> None:
    """A static finite scale ≥ 0 (> 0 when ``positive``); see :func:`unlearnx._validation.static_number`."""
    checks.static_number(name, value, low=0.0, low_open=positive)


def overflow_cause(quantities: dict[str, Callable[[], Any]]) -> str:
    """Names the first quantity whose float64 value exceeds float32's range (each computed on the host only
    when asked, after a non-finite output was found)."""
    for name, compute in quantities.items():
        with np.errstate(all="ignore"):
            peak = float(np.max(np.abs(np.asarray(compute(), np.float64)), initial=0.0))
        if not peak <= _FLOAT32_MAX:
            limit = f"{_FLOAT32_MAX:.3g}"
            return f"float32 overflowed in {name} (magnitude {peak:.3g} > {limit}); rescale the inputs"
    return "an intermediate of the float32 solve overflowed or the system is singular; rescale the inputs"


def host64(array: Any) -> np.ndarray:
    """A ``(d_in, *out)`` kernel or row matrix as a float64 NumPy matrix."""
    array = np.asarray(jnp.asarray(array, jnp.float32), np.float64)
    return array.reshape(array.shape[0], -1)


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
    checks.check_tree(name, keys)
    return keys


def as_kernel(name: str, kernel: Any, *, check_values: bool = True) -> jax.Array:
    """Validates a floating-point Flax-layout kernel ``(d_in, *out)`` and returns it as an array (its
    values too unless ``check_values=False``: callers with many kernels check them in one pass)."""
    kernel = jnp.asarray(kernel)
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {kernel.dtype}")
    if kernel.ndim < 2:
        raise ValueError(f"{name} must be a kernel of shape (d_in, d_out, ...), got shape {kernel.shape}")
    if kernel.shape[0] == 0 or math.prod(kernel.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty dimension: shape {kernel.shape}")
    if check_values:
        checks.check_tree(name, kernel)
    return kernel


def flat32(kernel: jax.Array) -> jax.Array:
    """A ``(d_in, *out)`` kernel as the float32 matrix ``(d_in, prod(out))``."""
    return kernel.reshape(kernel.shape[0], -1).astype(jnp.float32)
