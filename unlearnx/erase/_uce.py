"""Unified Concept Editing (Gandikota et al., arXiv 2308.14761): a closed-form edit of one linear map.

For a kernel K in Flax layout ``(d_in, d_out)`` (the map is x ↦ x K), erase-key rows C_E with targets V*,
preserve-key rows C_P and scales α (erase), β (preserve), λ (pull towards the old kernel), UCE solves

    min_K  α ‖C_E K − V*‖² + β ‖C_P (K − K_old)‖² + λ ‖K − K_old‖_F²

whose solution is

    K_new = G⁻¹ (λ K_old + α C_Eᵀ V* + β C_Pᵀ C_P K_old),   G = λ I + α C_Eᵀ C_E + β C_Pᵀ C_P.

Since G K_old = λ K_old + α C_Eᵀ C_E K_old + β C_Pᵀ C_P K_old, this equals

    K_new = K_old + G⁻¹ α C_Eᵀ (V* − C_E K_old),

which is what is computed, in float32: the *change* is solved for, so the rounding error scales with the
edit rather than the kernel, α = 0 returns K_old bit for bit, and targets equal to the current outputs
(V* = C_E K_old) change nothing. The solve never forms G or an inverse (see :func:`uce_change`), which
keeps float32 accurate for the ill-conditioned keys of real prompts.

The PyTorch layout W = Kᵀ ``(d_out, d_in)`` gives the transposed result,
W_new = (λ W + α V*ᵀ C_E + β W C_Pᵀ C_P) G⁻¹ (the reference code's Eq. 7).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx.erase._checks import as_kernel, as_rows, check_scale, flat32, host64, overflow_cause
from unlearnx.erase._linalg import hi_matmul, solve_refined

__all__ = ["uce", "uce_change"]


def uce_change(
    erase_keys: jax.Array,
    preserve_keys: jax.Array,
    residual: jax.Array,
    *,
    erase_scale: float | jax.Array,
    preserve_scale: float | jax.Array,
    lamb: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """X = G⁻¹ α C_Eᵀ R as factors ``(left, right)``, X = left @ right of rank ≤ n + m, where
    G = λ I + α C_Eᵀ C_E + β C_Pᵀ C_P, computed without forming G (float32).

    With the stacked keys A = [√α C_E; √β C_P], G = λ I + AᵀA and α C_Eᵀ R = Aᵀ F with F = [√α R; 0], so
    X = Aᵀ Y with Y = (λ I + A Aᵀ)⁻¹ F (push-through identity): an (n + m)-square solve, refined once
    with the residual F − λY − A(AᵀY). A plain float32 solve with G squares the conditioning of the keys:
    CLIP prompts repeat near-identical padding rows, giving G a condition number of ~10⁵–10⁶ at λ = 0.1,
    where it is off by ~1e-2 relative, while this stays near 1e-6. With more key rows than d_in the thin
    SVD A = U Σ Vᵀ is used instead: X = V diag(σ / (λ + σ²)) Uᵀ F.
    """
    n, m, d_in = erase_keys.shape[0], preserve_keys.shape[0], erase_keys.shape[1]
    alpha_root = jnp.sqrt(jnp.asarray(erase_scale, jnp.float32))
    beta_root = jnp.sqrt(jnp.asarray(preserve_scale, jnp.float32))
    stacked = jnp.concatenate([alpha_root * erase_keys, beta_root * preserve_keys])
    if n + m > d_in:
        left, sigma, right_t = jnp.linalg.svd(stacked, full_matrices=False)
        projected = hi_matmul(left[:n].T, alpha_root * residual)
        return right_t.T, (sigma / (lamb + sigma * sigma))[:, None] * projected
    rhs = jnp.concatenate([alpha_root * residual, jnp.zeros((m, residual.shape[1]), jnp.float32)])
    small = lamb * jnp.eye(n + m, dtype=jnp.float32) + hi_matmul(stacked, stacked.T)

    def miss(y):
        return rhs - lamb * y - hi_matmul(stacked, hi_matmul(stacked.T, y))

    return stacked.T, solve_refined(0.5 * (small + small.T), rhs, miss)


def uce(
    kernel: Any,
    erase_keys: Any,
    erase_targets: Any,
    preserve_keys: Any,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
) -> jax.Array:
    """The UCE closed-form edit of one kernel (see the module docstring for the math).

    Args:
        kernel: K_old in Flax layout ``(d_in, d_out)``. A 3-D attention kernel ``(d_in, heads, head_dim)``
            (or any ``(d_in, *out)``) is edited as the matrix ``(d_in, prod(out))`` and returned in its shape.
        erase_keys: C_E, ``[n, d_in]`` rows (n ≥ 1), e.g. the 77 token embeddings of a prompt.
        erase_targets: V*, the desired outputs of the erase keys: ``[n, *out]`` (the kernel's output shape,
            e.g. ``[n, heads, head_dim]``) or flattened ``[n, prod(out)]``; in RECE ``guide_keys @ K_old``.
        preserve_keys: C_P, ``[m, d_in]`` rows whose outputs should stay put; m may be 0 (or ``None``).
        erase_scale: α ≥ 0.
        preserve_scale: β ≥ 0.
        lamb: λ > 0 (keeps G positive definite; the paper's λ-free formula is the limit λ → 0).

    Returns:
        K_new with ``kernel``'s shape and dtype (computed in float32).

    Raises:
        ValueError: shapes that do not fit the kernel (naming the argument and shapes), empty erase keys,
            negative or non-finite scales, λ = 0, non-finite values (checked when not traced), or a non-finite
            edited kernel from finite inputs (float32 overflow, checked when not traced: the message names the
            quantity that overflowed, e.g. the Gram matrix α C_E C_Eᵀ of keys near 1e20).
        TypeError: non-numeric inputs; traced scales (hyper-parameters are static).

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import erase
        >>> # K = I; map the key c = e₁ to 0: G = diag(1 + λ, λ), so row 1 of K shrinks to 1 − 1/(1 + λ)
        >>> edited = erase.uce(jnp.eye(2), jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)), None, lamb=0.5)
        >>> edited.round(4).tolist()
        [[0.3333, 0.0], [0.0, 1.0]]

    References:
        Gandikota et al., `Unified Concept Editing in Diffusion Models <https://arxiv.org/abs/2308.14761>`_,
        WACV 2024.
    """
    check_scale("erase_scale", erase_scale)
    check_scale("preserve_scale", preserve_scale)
    check_scale("lamb", lamb, positive=True)
    kernel = as_kernel("kernel", kernel)
    d_in, d_out = kernel.shape[0], math.prod(kernel.shape[1:])
    keys = as_rows("erase_keys", erase_keys, d_in, allow_empty=False)
    preserve = as_rows("preserve_keys", preserve_keys, d_in, allow_empty=True)
    targets = jnp.asarray(erase_targets)
    out_shape = tuple(kernel.shape[1:])
    if targets.shape not in ((keys.shape[0], *out_shape), (keys.shape[0], d_out)):
        raise ValueError(
            f"erase_targets must have shape {(keys.shape[0], *out_shape)} or {(keys.shape[0], d_out)} "
            f"(one row per erase key, in the kernel's output space), got {targets.shape}"
        )
    checks.check_tree("erase_targets", targets)
    edited = _uce(kernel, keys, targets, preserve, erase_scale, preserve_scale, lamb)
    if not checks.is_traced(edited):
        checks.check_output(
            "uce: the edited kernel",
            edited,
            _UceOverflow(kernel, keys, targets, preserve, erase_scale, preserve_scale),
        )
    return edited


class _UceOverflow:
    """The overflow diagnosis of :func:`uce`, computed on the host only when its message is formatted."""

    def __init__(self, kernel, keys, targets, preserve, erase_scale, preserve_scale):
        self.args = (kernel, keys, targets, preserve, float(erase_scale), float(preserve_scale))

    def __str__(self) -> str:
        kernel, keys, targets, preserve, alpha, beta = self.args
        k, c, p = host64(kernel), host64(keys), host64(preserve) if preserve.shape[0] else np.zeros((0, 1))
        return overflow_cause(
            {
                "the erase keys' outputs C_E K": lambda: c @ k,
                "the residual V* − C_E K": lambda: host64(targets) - c @ k,
                "the Gram matrix α C_E C_Eᵀ": lambda: alpha * (c @ c.T),
                "the Gram matrix β C_P C_Pᵀ": lambda: beta * (p @ p.T),
            }
        )


@jax.jit
def _uce(kernel, keys, targets, preserve, erase_scale, preserve_scale, lamb):
    flat = flat32(kernel)
    keys, preserve = keys.astype(jnp.float32), preserve.astype(jnp.float32)
    residual = targets.reshape(keys.shape[0], -1).astype(jnp.float32) - hi_matmul(keys, flat)
    left, right = uce_change(
        keys, preserve, residual, erase_scale=erase_scale, preserve_scale=preserve_scale, lamb=lamb
    )
    change = hi_matmul(left, right)
    return (flat + change).reshape(kernel.shape).astype(kernel.dtype)
