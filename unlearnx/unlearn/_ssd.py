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

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree

__all__ = ["assd_alpha", "dampening_factors", "ssd"]


def _check_importances(like: PyTree, forget_importance: PyTree, full_importance: PyTree) -> None:
    """Structures match ``like``; concrete importances are finite and non-negative (counted on device, at
    trace time for concrete trees closed over by an outer ``jit``)."""
    tree_lib.check_same_structure(like, forget_importance, names=("params", "forget_importance"))
    tree_lib.check_same_structure(like, full_importance, names=("params", "full_importance"))
    checks.check_tree("forget_importance", forget_importance, nonnegative=True)
    checks.check_tree("full_importance", full_importance, nonnegative=True)


def _check_params(params: PyTree, selected: PyTree) -> None:
    """The selected leaves SSD rescales must be floating point and (when concrete) finite."""
    chosen = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    for (path, leaf), keep in zip(flat, jax.tree.leaves(selected), strict=True):
        if not keep:
            continue
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"params[{checks.path_str(path)!r}] has dtype {jnp.result_type(leaf)}: SSD rescales "
                "parameters, which would truncate integers; exclude the leaf with where="
            )
        chosen[checks.path_str(path)] = leaf
    checks.check_tree("params", chosen)


def _array(leaf: Any) -> Any:
    """An array leaf as it is (NumPy or JAX); a Python scalar leaf as a JAX array."""
    return leaf if hasattr(leaf, "astype") else jnp.asarray(leaf)


def _factors(forget_importance: PyTree, full_importance: PyTree, alpha, lam, selected: PyTree) -> PyTree:
    def factor(forget, full, keep):
        forget = _array(forget).astype(jnp.float32)
        full = _array(full).astype(jnp.float32)
        chosen = (forget > alpha * full) & keep
        safe_forget = jnp.where(chosen, forget, 1.0)
        return jnp.where(chosen, jnp.minimum(lam * full / safe_forget, 1.0), 1.0)

    return jax.tree.map(factor, forget_importance, full_importance, selected)


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
        forget_importance: I_f tree (non-negative, finite).
        full_importance: I_D tree of the same structure (non-negative, finite).
        alpha: selection threshold α ≥ 0 (static).
        lam: dampening constant λ ≥ 0 (static).
        selected: optional bool tree; ``False`` leaves are never dampened.

    Returns:
        A float32 tree of β ∈ [0, 1].

    Raises:
        ValueError: mismatched structures, negative/non-finite importances (checked when concrete), negative
            or non-finite α or λ.
        TypeError: a traced α or λ (hyper-parameters are static; see :mod:`unlearnx._validation`).

    Examples:
        >>> import jax.numpy as jnp
        >>> forget, full = {"w": jnp.array([1.0, 1.0, 0.0])}, {"w": jnp.array([0.05, 0.5, 0.0])}
        >>> dampening_factors(forget, full, alpha=10.0)["w"].tolist()  # 1 > 10·0.05: β = 0.05 / 1
        [0.05, 1.0, 1.0]
    """
    checks.static_number("alpha", alpha, low=0.0)
    checks.static_number("lam", lam, low=0.0)
    tree_lib.check_same_structure(
        forget_importance, full_importance, names=("forget_importance", "full_importance")
    )
    checks.check_tree("forget_importance", forget_importance, nonnegative=True)
    checks.check_tree("full_importance", full_importance, nonnegative=True)
    if selected is None:
        selected = jax.tree.map(lambda _: True, forget_importance)
    else:
        tree_lib.check_same_structure(
            forget_importance, selected, names=("forget_importance", "selected"), shapes=False
        )
    return _factors(forget_importance, full_importance, alpha, lam, selected)


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
        The dampened tree, ``params``' exact structure and dtypes; unselected leaves are returned
        bit-identical. Importances below float32's smallest normal number (≈1.2e-38) count as 0, since XLA
        flushes subnormals to zero; rescale both importance trees by a common factor if yours are that small.

    Raises:
        ValueError: mismatched structures or shapes, negative/non-finite importances or NaN/inf parameters
            among the selected ones (checked when concrete, also when closed over by an outer ``jit``),
            negative or non-finite α or λ.
        TypeError: a traced α or λ (hyper-parameters are static: mark them ``static_argnames`` when jitting),
            or a selected parameter that is not floating point (dampening would truncate it).

    Examples:
        >>> import jax.numpy as jnp
        >>> variables = {"params": {"w": jnp.array([2.0, 2.0])}, "batch_stats": {"mean": jnp.array([2.0])}}
        >>> forget = {"params": {"w": jnp.array([4.0, 1.0])}, "batch_stats": {"mean": jnp.array([9.0])}}
        >>> full = {"params": {"w": jnp.array([0.2, 0.5])}, "batch_stats": {"mean": jnp.array([0.1])}}
        >>> out = ssd(variables, forget, full, alpha=10.0, lam=1.0)  # only w[0]: 4 > 10·0.2, β = 0.2 / 4
        >>> out["params"]["w"].tolist(), out["batch_stats"]["mean"].tolist()
        ([0.1, 2.0], [2.0])

    References:
        Foster, Schoepf & Brintrup, `Fast Machine Unlearning Without Retraining Through Selective Synaptic
        Dampening <https://arxiv.org/abs/2308.07707>`_, AAAI 2024.
    """
    checks.static_number("alpha", alpha, low=0.0)
    checks.static_number("lam", lam, low=0.0)
    _check_importances(params, forget_importance, full_importance)
    selected = tree_lib.trainable(params, where)
    _check_params(params, selected)
    betas = _factors(forget_importance, full_importance, alpha, lam, selected)

    def dampen(param, beta, keep):
        if not keep:
            return param
        param = _array(param)
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

    α = percentile_p(I_f / I_D) with p = 100 − ln(1 + 100·s) and s = ``|D_f|`` / ``|D|``; ratios that are
    NaN or infinite (I_D = 0) are dropped; with λ = 1 this needs no tuning (Schoepf et al., arXiv 2402.10098).

    Args:
        forget_importance: I_f tree.
        full_importance: I_D tree of the same structure.
        forget_fraction: s ∈ (0, 1].
        where: the parameters whose ratios enter the percentile (default: all but batch statistics).

    Returns:
        A float32 scalar α (linear-interpolated percentile, as ``numpy.percentile``).

    Raises:
        ValueError: ``forget_fraction`` outside (0, 1], mismatched trees, negative or non-finite importances
            (checked when concrete), or (concrete importances) no finite ratio at all.
        TypeError: a traced ``forget_fraction`` (hyper-parameters are static).

    Examples:
        >>> import math, jax.numpy as jnp
        >>> ratios = jnp.arange(1.0, 101.0)  # I_f / I_D = 1, 2, ..., 100
        >>> alpha = assd_alpha({"w": ratios}, {"w": jnp.ones(100)}, forget_fraction=0.1)
        >>> p = 100 - math.log1p(100 * 0.1)  # the 97.60th percentile
        >>> round(float(alpha), 3), round(1 + 0.99 * p, 3)
        (97.626, 97.626)

    References:
        Schoepf, Foster & Brintrup, `Parameter-Tuning-Free Data Entry Error Unlearning with Adaptive Selective
        Synaptic Dampening <https://arxiv.org/abs/2402.10098>`_, 2024.
    """
    fraction = checks.static_number("forget_fraction", forget_fraction, low=0.0, high=1.0, low_open=True)
    tree_lib.check_same_structure(
        forget_importance, full_importance, names=("forget_importance", "full_importance")
    )
    checks.check_tree("forget_importance", forget_importance, nonnegative=True)
    checks.check_tree("full_importance", full_importance, nonnegative=True)
    percentile = 100.0 - math.log1p(100.0 * fraction)
    chosen = jax.tree.leaves(tree_lib.trainable(forget_importance, where))

    def flat(tree):
        leaves = [
            jnp.ravel(a).astype(jnp.float32) for a, c in zip(jax.tree.leaves(tree), chosen, strict=True) if c
        ]
        if not leaves:
            raise ValueError("assd_alpha: the selector matches no parameter")
        return jnp.concatenate(leaves)

    if checks.is_traced((forget_importance, full_importance)):
        ratio = flat(forget_importance) / flat(full_importance)
        return jnp.nanpercentile(jnp.where(jnp.isfinite(ratio), ratio, jnp.nan), percentile)
    with jax.ensure_compile_time_eval():  # concrete trees closed over by an outer jit are checked too
        ratio = flat(forget_importance) / flat(full_importance)
        ratio = jnp.where(jnp.isfinite(ratio), ratio, jnp.nan)
        if bool(jnp.all(jnp.isnan(ratio))):
            raise ValueError("assd_alpha: no finite importance ratio (full_importance is zero everywhere)")
        return jnp.nanpercentile(ratio, percentile)
