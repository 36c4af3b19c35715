"""The one validation rule of unlearnx (private; every public function validates through this module).

**Hyper-parameters are static.** A hyper-parameter is a scalar that configures a transform rather than data
it transforms: α, λ, β, γ, rates, exponents, strengths, sparsities, fractions, scales, step counts. It must be
a concrete Python or NumPy number (a concrete 0-d ``jax.Array`` is accepted too) and is validated when the
function is called -- type, shape, finiteness and range -- raising ``TypeError`` (not a real number, or a
bool) or ``ValueError`` (NaN, infinite, out of range) that names the argument and the value. A
hyper-parameter that is *traced* (e.g. passed as an argument of an outer ``jax.jit``) raises ``TypeError``
naming it: pass a Python number, or mark the argument static (``jax.jit(f, static_argnames=("alpha",))``).
This is optax's convention, and the only way to keep a check from being skipped silently under ``jit``:
runtime checks inside a compiled function (``jax.debug.callback`` raising) are not reliable, and static
values cost one compilation per value, which is cheap for transforms that run once per configuration.
Step-dependent values computed inside a training step (a schedule's sparsity or drop fraction at a traced
step, a top-k count) are data, not hyper-parameters: they may be traced and are checked when concrete.

**Array data is checked when concrete.** Values held in arrays (importances, labels, token ids, masks, keys)
are checked eagerly when the array is concrete -- also when a concrete array is closed over by an outer
``jit``, which is evaluated at trace time with ``jax.ensure_compile_time_eval`` -- and only skipped when the
array itself is traced; each public docstring says which data checks it makes and what a traced bad value
gives. Shapes and dtypes are static, so they are always checked.

**Outputs that can overflow are checked.** Where a solve or a square can overflow float32 from finite inputs,
the result is checked when concrete and a ``ValueError`` names the quantity that overflowed.

Every message names the argument, the tree path (``jax.tree_util.keystr(path, simple=True, separator="/")``)
and an offending value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx._typing import PyTree

INT32_MAX = 2**31 - 1  # sizes, steps and counts that reach JAX (whose default integer is int32)

__all__ = [
    "check_binary",
    "check_ids",
    "check_numbers",
    "check_output",
    "check_tree",
    "choice",
    "is_traced",
    "nonfinite_flags",
    "path_str",
    "static_int",
    "static_number",
    "static_numbers",
]


def is_traced(value: Any) -> bool:
    """Whether any leaf of ``value`` is a JAX tracer (an abstract value inside ``jit``, ``grad``, ...)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def path_str(path: tuple) -> str:
    """A key path as ``a/b/0`` (``jax.tree_util.keystr`` in simple form with ``/`` separators)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _traced_error(name: str, value: Any) -> TypeError:
    aval = getattr(value, "aval", value)
    return TypeError(
        f"{name} is a traced value ({aval}), but hyper-parameters are static in unlearnx: pass a Python "
        f"number, or mark {name!r} static (jax.jit(..., static_argnames=({name!r},)))"
    )


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_bound(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_bound(high)}"
    return ""


def _check_range(name: str, value, scalar, low, high, low_open: bool, high_open: bool, kind: str) -> None:
    below = low is not None and (scalar <= low if low_open else scalar < low)
    above = high is not None and (scalar >= high if high_open else scalar > high)
    if below or above:
        raise ValueError(f"{name} must be {kind}{_interval(low, high, low_open, high_open)}, got {value!r}")


def _scalar_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, jax.core.Tracer):
        raise _traced_error(name, value)
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    try:
        array = np.asarray(value)
    except Exception as error:  # e.g. a ragged list
        raise TypeError(f"{name} must be a real number, got {value!r}") from error
    if array.dtype.kind in "OUSV" or array.dtype.kind == "c":
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if array.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}")
    if array.dtype.kind == "b":
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    return array


def static_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validates a real, finite, static hyper-parameter in the given range and returns it as a float.

    Raises:
      TypeError: a traced value (naming the argument and how to make it static), a bool or a non-number.
      ValueError: a non-scalar, NaN, infinity, or a value outside the range.
    """
    array = _scalar_array(name, value)
    if array.dtype.kind in "iu" and not -INT32_MAX <= int(array) <= INT32_MAX:
        raise ValueError(f"{name} = {value!r} does not fit int32 (JAX's default integer): pass it as a float")
    scalar = float(array)
    if not math.isfinite(scalar):
        raise ValueError(
            f"{name} must be a finite number{_interval(low, high, low_open, high_open)}, got {value!r}"
        )
    _check_range(name, value, scalar, low, high, low_open, high_open, "a finite number")
    return scalar


def static_numbers(names_values: Iterable[tuple[str, Any]], **bounds: Any) -> None:
    """:func:`static_number` for each ``(name, value)`` pair with the same bounds."""
    for name, value in names_values:
        static_number(name, value, **bounds)


def static_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Validates a static integer hyper-parameter (Python or NumPy integer, any size) in ``[low, high]``."""
    if isinstance(value, int) and not isinstance(value, bool):
        scalar = value  # a Python int of any size, e.g. a budget of 2**62
    else:
        array = _scalar_array(name, value)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer, got {value!r}")
        scalar = int(array)
    _check_range(name, value, scalar, low, high, False, False, "an integer")
    return scalar


def check_numbers(name: str, value: Any) -> None:
    """Concrete numeric data (e.g. a step or an array of steps) must be real, finite and, for integers, fit
    int32 (JAX's default integer): skipped when traced."""
    if is_traced(value):
        return
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    try:
        array = np.asarray(value)
    except Exception as error:
        raise TypeError(f"{name} must be numeric, got {value!r}") from error
    if array.dtype.kind not in "iuf" or array.dtype.kind == "b":
        raise TypeError(f"{name} must be real numbers, got {value!r}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if array.size and array.dtype.kind in "iu" and (array.min() < -(2**31) or array.max() >= 2**31):
        raise ValueError(f"{name} must fit int32, got {value!r}")


def choice(name: str, value: Any, options: tuple) -> Any:
    """Raises ``ValueError`` unless ``value`` is one of ``options``."""
    if not isinstance(value, str | int | float | type(None)) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


@functools.partial(jax.jit, static_argnames="nonnegative")
def _any_bad(leaves: list, nonnegative: bool) -> jax.Array:
    """One flag per leaf: it holds NaN/inf (or, with ``nonnegative``, a negative entry).

    0·x is NaN exactly where x is NaN or ±inf, and a sum of zeros cannot overflow, so ``sum(0·x)`` is
    finite iff every entry is: one vectorised pass (a count of ``~isfinite`` costs ~5× more on XLA:CPU).
    """

    def bad(leaf):
        flag = jnp.zeros((), bool)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            flag = ~jnp.isfinite(jnp.sum(leaf * jnp.zeros((), leaf.dtype)))
        if nonnegative and leaf.size:
            flag = flag | (jnp.min(leaf) < 0)
        return flag

    return jnp.stack([bad(leaf) for leaf in leaves]) if leaves else jnp.zeros(0, bool)


def nonfinite_flags(tree: PyTree) -> jax.Array:
    """One bool per leaf of ``tree`` (``jax.tree.leaves`` order), True where it holds NaN/inf: the rule of
    :func:`check_tree`, as a traceable value, so that a jitted computation can return it beside its result
    (one dispatch, one transfer) and the caller run :func:`check_tree` / :func:`check_output` only when one
    is set."""
    return _any_bad(jax.tree.leaves(tree), False)


def _counts_if_bad(leaves: list, nonnegative: bool) -> np.ndarray:
    """Per-leaf counts of bad entries (:func:`_bad_counts`), computed only when :func:`_any_bad` flags one."""
    with jax.ensure_compile_time_eval():
        arrays = [jnp.asarray(leaf) for leaf in leaves]
        if not np.asarray(_any_bad(arrays, nonnegative)).any():
            return np.zeros(len(leaves), np.int64)
        return np.asarray(_bad_counts(arrays, nonnegative))


@functools.partial(jax.jit, static_argnames="nonnegative")
def _bad_counts(leaves: list, nonnegative: bool) -> jax.Array:
    def bad(leaf):
        invalid = (
            ~jnp.isfinite(leaf) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.zeros(leaf.shape, bool)
        )
        if nonnegative:
            invalid = invalid | (leaf < 0)
        return jnp.sum(invalid, dtype=jnp.int32)

    return jnp.stack([bad(leaf) for leaf in leaves]) if leaves else jnp.zeros(0, jnp.int32)


def _first_bad(leaf: Any, nonnegative: bool) -> float:
    values = (
        np.asarray(
            jnp.asarray(leaf, jnp.float32) if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf
        )
        .astype(np.float64)
        .ravel()
    )
    invalid = ~np.isfinite(values)
    if nonnegative:
        invalid |= values < 0
    return float(values[invalid][0])


def _concrete_leaves(name: str, tree: PyTree) -> list[tuple[str, Any]]:
    """The concrete leaves as arrays JAX accepts: host data is converted (and type-checked) here, so that
    a string, an object or an integer beyond int32 gets our error rather than one from deep inside JAX."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    leaves = []
    for path, leaf in flat:
        if isinstance(leaf, jax.core.Tracer):
            continue
        if not isinstance(leaf, jax.Array):
            where = _where(name, path_str(path))
            try:
                leaf = np.asarray(leaf)
            except Exception as error:
                raise TypeError(f"{where} must be a numeric array, got {type(leaf).__name__}") from error
            if leaf.dtype.kind not in "biuf":
                raise TypeError(f"{where} must be a numeric array, got dtype {leaf.dtype}")
            if leaf.dtype.kind in "iu" and leaf.size and (leaf.min() < -INT32_MAX or leaf.max() > INT32_MAX):
                raise ValueError(f"{where} holds integers beyond int32 (JAX's default integer)")
        leaves.append((path_str(path), leaf))
    return leaves


def _where(name: str, path: str) -> str:
    return f"{name}[{path!r}]" if path else name


def _first_flagged(
    name: str, tree: PyTree, nonnegative: bool, flags: Any = None
) -> tuple[str, Any, int] | None:
    """``(path, leaf, count)`` of the first concrete leaf holding NaN/inf (or, with ``nonnegative``, a
    negative entry), counted on device in one transfer; None when every concrete leaf is clean, or at
    once when ``flags`` (:func:`nonfinite_flags` of ``tree``, from the caller) are concrete and all False."""
    if flags is not None and not nonnegative and not is_traced(flags) and not np.asarray(flags).any():
        return None
    leaves = _concrete_leaves(name, tree)
    if not leaves:
        return None
    counts = _counts_if_bad([leaf for _, leaf in leaves], nonnegative)
    flagged = [(path, leaf, int(count)) for (path, leaf), count in zip(leaves, counts, strict=True) if count]
    return flagged[0] if flagged else None


def check_tree(
    name: str, tree: PyTree, *, nonnegative: bool = False, what: str = "", flags: Any = None
) -> None:
    """Raises ``ValueError`` naming ``name``, the path and a bad value when a concrete leaf of ``tree`` holds
    NaN/inf (or, with ``nonnegative``, a negative entry). Traced leaves are skipped.

    Concrete arrays closed over by an outer ``jit`` are counted at trace time (on device, one transfer).
    ``flags``, :func:`nonfinite_flags` of ``tree`` returned by the caller's own jitted computation, skip the
    search when they are concrete and all False.
    """
    flagged = _first_flagged(name, tree, nonnegative, flags)
    if flagged:
        path, leaf, count = flagged
        rule = "finite and non-negative" if nonnegative else "finite"
        raise ValueError(
            f"{_where(name, path)} must be {rule}{what}, found {_first_bad(leaf, nonnegative)!r} "
            f"({count} of {np.size(leaf)} entries)"
        )


def check_output(name: str, tree: PyTree, cause: object, *, flags: Any = None) -> None:
    """Raises ``ValueError`` when a concrete output leaf holds NaN/inf, naming it, the path and ``cause``
    (formatted with ``str`` only then, so a diagnosis can be computed lazily); ``flags`` as in
    :func:`check_tree`."""
    flagged = _first_flagged(name, tree, False, flags)
    if flagged:
        path, leaf, count = flagged
        raise ValueError(
            f"{_where(name, path)} is not finite ({count} of {np.size(leaf)} entries, e.g. "
            f"{_first_bad(leaf, False)!r}) although the inputs are finite: {cause}"
        )


def check_ids(name: str, ids: Any, upper: int, *, low: int = 0, what: str = "ids") -> None:
    """Integer ``ids`` in ``[low, upper)``: the dtype always, the values when concrete.

    Out-of-range ids would otherwise be silent: ``take_along_axis`` fills NaN with a zero gradient and
    negative indices wrap around to the last class.

    Raises:
      TypeError: a non-integer dtype.
      ValueError: (concrete ids) a value outside ``[low, upper)``, naming it and its index.
    """
    dtype = jnp.result_type(ids)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer {what}, got dtype {dtype}")
    if is_traced(ids) or np.size(ids) == 0:
        return
    if isinstance(ids, jax.Array):  # on device: reduce there (also at trace time when closed over)
        with jax.ensure_compile_time_eval():
            array = jnp.asarray(ids)
            low_seen, high_seen = int(jnp.min(array)), int(jnp.max(array))
    else:
        array = np.asarray(ids)
        low_seen, high_seen = int(array.min()), int(array.max())
    if low_seen < low or high_seen >= upper:
        values = np.asarray(ids)
        index = np.argwhere((values < low) | (values >= upper))[0]
        where = tuple(int(i) for i in index)
        raise ValueError(
            f"{name} must be {what} in [{low}, {upper}), found {values[where].item()} at index "
            f"{where if len(where) != 1 else where[0]}"
        )


def check_binary(name: str, array: Any) -> None:
    """A mask must be boolean or exactly 0/1 (values checked when concrete): 0.5 is not a selection."""
    if is_traced(array):
        dtype = jnp.result_type(array)
        if not (
            dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        ):
            raise TypeError(f"{name} must be a boolean or 0/1 mask, got dtype {dtype}")
        return
    for path, leaf in _concrete_leaves(name, array):
        where = _where(name, path)
        if leaf.dtype == jnp.bool_:
            continue
        with jax.ensure_compile_time_eval():
            leaf = jnp.asarray(leaf)
            bad = int(jnp.sum((leaf != 0) & (leaf != 1)))
        if bad:
            values = np.asarray(leaf).ravel()
            example = values[(values != 0) & (values != 1)][0].item()
            raise ValueError(f"{where} must be boolean or exactly 0/1, found {example!r} ({bad} entries)")
