"""Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024) and the ASSD percentile α.

Given the importance of every parameter on the forget set, I_f = I_{D_f}, and on the full training data,
I_D (e.g. from :func:`unlearnx.fisher.diagonal`), SSD selects the parameters that matter disproportionately
to the forget set and shrinks them:

    selected_i  ⇔  I_f[i] > α · I_D[i]
    θ_i ← β_i θ_i,   β_i = min(λ · I_D[i] / I_f[i], 1)   for selected i; unchanged otherwise.

A selected parameter shrinks by at least λ/α (β < λ/α); selection needs I_f > 0, so the ratio never
divides by zero, and I_D = 0 gives β = 0.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import tree as tree_lib

PyTree = Any

__all__ = ["assd_alpha", "dampening_factors", "ssd"]


def _check_hyperparameter(name: str, value: Any) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    value_array = np.asarray(value)
    if value_array.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {value_array.shape}")
    scalar = float(value_array)
    if not math.isfinite(scalar) or scalar < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


@jax.jit
def _count_invalid(leaf: jax.Array) -> jax.Array:
    return jnp.sum(~jnp.isfinite(leaf) | (leaf < 0))


def _check_importances(params: PyTree, forget_importance: PyTree, full_importance: PyTree) -> None:
    """Structure check, then a device-side count of negative or non-finite entries (no host copy)."""
    tree_lib.check_same_structure(params, forget_importance, names=("params", "forget_importance"))
    tree_lib.check_same_structure(params, full_importance, names=("params", "full_importance"))
    for name, importance in (("forget_importance", forget_importance), ("full_importance", full_importance)):
        for path, leaf in tree_lib.leaves_with_paths(importance):
            if isinstance(leaf, jax.core.Tracer):
                continue
            invalid = int(_count_invalid(jnp.asarray(leaf)))
            if invalid:
                values = np.asarray(leaf).ravel()
                example = values[~np.isfinite(values) | (values < 0)][0]
                raise ValueError(
                    f"{name}: leaf {path!r} must be finite and non-negative, found {example!r} "
                    f"({invalid} bad entries)"
                )


def _trainable(tree: PyTree, where: tree_lib.Where) -> PyTree:
    """The selector's leaves minus batch statistics, which SSD never touches whatever ``where`` says."""
    return jax.tree.map(
        lambda chosen, stat: bool(chosen) and not stat,
        tree_lib.select(tree, where),
        tree_lib.is_batch_stat(tree),
    )


def dampening_factors(
    forget_importance: PyTree,
    full_importance: PyTree,
    *,
    alpha: float = 10.0,
    lam: float = 1.0,
    selected: PyTree | None = None,
) -> PyTree:
    """The per-parameter SSD multipliers β (1 where a parameter is not selected).

    Args:
      forget_importance: I_f tree.
      full_importance: I_D tree of the same structure.
      alpha: selection threshold α ≥ 0.
      lam: dampening constant λ ≥ 0.
      selected: optional bool tree; ``False`` leaves are never dampened.

    Returns:
      A float32 tree of β ∈ [0, 1].
    """

    def factor(forget, full, keep):
        forget = forget.astype(jnp.float32)
        full = full.astype(jnp.float32)
        chosen = (forget > alpha * full) & keep
        safe_forget = jnp.where(chosen, forget, 1.0)
        return jnp.where(chosen, jnp.minimum(lam * full / safe_forget, 1.0), 1.0)

    if selected is None:
        selected = jax.tree.map(lambda _: True, forget_importance)
    return jax.tree.map(factor, forget_importance, full_importance, selected)


def ssd(
    params: PyTree,
    forget_importance: PyTree,
    full_importance: PyTree,
    *,
    alpha: float = 10.0,
    lam: float = 1.0,
    where: tree_lib.Where = None,
) -> PyTree:
    """Selective Synaptic Dampening of ``params`` (see the module docstring for the rule).

    Args:
      params: parameter tree (Linen dict, NNX ``State``, plain dict, ...).
      forget_importance: I_f, same structure as ``params`` (non-negative, finite).
      full_importance: I_D, same structure (non-negative, finite). D includes the forget set.
      alpha: selection threshold α ≥ 0 (paper default 10 for ResNet-18, 5 for ViT full-class).
      lam: dampening constant λ ≥ 0 (paper default 1).
      where: selector of the parameters SSD may touch (``unlearnx.tree`` syntax; default: all).
        Batch statistics are never changed, whatever ``where`` selects.

    Returns:
      The dampened tree, ``params``' exact structure and dtypes; unselected leaves are returned bit-identical.
      Importances below float32's smallest normal number (≈1.2e-38) count as 0, since XLA flushes
      subnormals to zero; rescale both importance trees by a common factor if yours are that small.

    Raises:
      ValueError: mismatched structures or shapes, negative/non-finite importances (checked when concrete),
        negative or non-finite α or λ.
    """
    _check_hyperparameter("alpha", alpha)
    _check_hyperparameter("lam", lam)
    _check_importances(params, forget_importance, full_importance)
    selected = _trainable(params, where)
    betas = dampening_factors(forget_importance, full_importance, alpha=alpha, lam=lam, selected=selected)

    def dampen(param, beta, keep):
        if not keep:
            return param
        scaled = (beta * param.astype(jnp.float32)).astype(param.dtype)
        # Select rather than multiply by β = 1: XLA flushes denormals to zero, so 1·θ is not always θ.
        return jnp.where(beta < 1.0, scaled, param)

    return jax.tree.map(dampen, params, betas, selected)


def assd_alpha(
    forget_importance: PyTree,
    full_importance: PyTree,
    forget_fraction: float,
    *,
    where: tree_lib.Where = None,
) -> jax.Array:
    """The ASSD α: a percentile of the importance ratio I_f / I_D over all parameters.

    α = percentile_p(I_f / I_D) with p = 100 − ln(1 + 100·s) and s = |D_f| / |D|; ratios that are NaN or
    infinite (I_D = 0) are dropped; with λ = 1 this needs no tuning (Schoepf et al., arXiv 2402.10098).

    Args:
      forget_importance: I_f tree.
      full_importance: I_D tree of the same structure.
      forget_fraction: s ∈ (0, 1].
      where: the parameters whose ratios enter the percentile (default: all but batch statistics).
      where: the parameters whose ratios enter the percentile (default: all but batch statistics).

    Returns:
      A float32 scalar α (linear-interpolated percentile, as ``numpy.percentile``).

    Raises:
      ValueError: ``forget_fraction`` outside (0, 1], mismatched trees, or no finite ratio at all.
    """
    fraction = float(forget_fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"forget_fraction must be in (0, 1], got {forget_fraction!r}")
    tree_lib.check_same_structure(forget_importance, full_importance, names=("forget", "full"))
    percentile = 100.0 - math.log1p(100.0 * fraction)
    chosen = jax.tree.leaves(_trainable(forget_importance, where))

    def flat(tree):
        leaves = [
            jnp.ravel(a).astype(jnp.float32) for a, c in zip(jax.tree.leaves(tree), chosen, strict=True) if c
        ]
        if not leaves:
            raise ValueError("assd_alpha: the selector matches no parameter")
        return jnp.concatenate(leaves)

    ratio = flat(forget_importance) / flat(full_importance)
    ratio = jnp.where(jnp.isfinite(ratio), ratio, jnp.nan)
    if not isinstance(ratio, jax.core.Tracer) and bool(jnp.all(jnp.isnan(ratio))):
        raise ValueError("assd_alpha: no finite importance ratio (full_importance is zero everywhere)")
    return jnp.nanpercentile(ratio, percentile)
