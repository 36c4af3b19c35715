"""RECE's adversarial embedding (Gong et al., ECCV 2024, step (a)): the input on which edited maps
reproduce what the original maps did on a concept.

Given edited kernels K′_l and original kernels K_l (Flax layout ``(d_in, d_out_l)``, all sharing d_in) and a
concept embedding c (one token row), RECE solves

    c′ = argmin_x Σ_l ‖x K′_l − c K_l‖² + λ_reg ‖x‖²
       = (λ_reg I + Σ_l K′_l K′_lᵀ)⁻¹ (Σ_l K′_l K_lᵀ) c,

the same d_in × d_in map applied to every token row (BOS, EOS and padding rows included). λ_reg shrinks
c′ towards 0, protecting unrelated concepts; with K′ = K and λ_reg → 0 it returns c.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from unlearnx import tree as tree_lib
from unlearnx.erase._checks import as_kernel, as_rows, check_scale, flat32, hi_matmul

__all__ = ["derive_embedding", "embedding_from_factors", "embedding_map"]


def embedding_map(
    edited_gram: jax.Array, cross_gram: jax.Array, concept_keys: jax.Array, reg: float | jax.Array
) -> jax.Array:
    """C′ = solve(λ_reg I + Σ K′K′ᵀ, (Σ K′Kᵀ) Cᵀ)ᵀ from the two d_in × d_in sums (float32)."""
    d_in = edited_gram.shape[0]
    lhs = reg * jnp.eye(d_in, dtype=jnp.float32) + 0.5 * (edited_gram + edited_gram.T)
    return jnp.linalg.solve(lhs, hi_matmul(cross_gram, concept_keys.T)).T


def embedding_from_factors(
    edited_factor: jax.Array, original_factor: jax.Array, concept_keys: jax.Array, reg: float | jax.Array
) -> jax.Array:
    """C′ from factors W′ = M F, F with Σ K′K′ᵀ = W′W′ᵀ and Σ K′Kᵀ = W′Fᵀ (K′ = M K, S = Σ K Kᵀ = F Fᵀ).

    c′ minimises ‖W′ᵀ x − Fᵀ c‖² + λ_reg ‖x‖², a ridge least-squares problem solved by corrected
    semi-normal equations: R from the QR factorisation of [W′ᵀ; √λ_reg I] (so RᵀR = λ_reg I + W′W′ᵀ without
    forming it), x₀ = R⁻¹R⁻ᵀ W′ b, then one correction with the residual. This keeps float32 accurate to
    ~ε·κ rather than the ~ε·κ² of the normal equations, κ² = cond(λ_reg I + Σ K′K′ᵀ), which grows to
    ~10⁴ over RECE rounds because each erase nearly collapses the concept directions.
    """
    d_in = edited_factor.shape[0]
    root = jnp.sqrt(jnp.asarray(reg, jnp.float32))
    stacked = jnp.concatenate([edited_factor.T, root * jnp.eye(d_in, dtype=jnp.float32)])
    upper = jnp.linalg.qr(stacked, mode="r")[:d_in]

    def normal_solve(rhs):
        halfway = jax.scipy.linalg.solve_triangular(upper, rhs, lower=False, trans=1)
        return jax.scipy.linalg.solve_triangular(upper, halfway, lower=False)

    targets = hi_matmul(original_factor.T, concept_keys.T)  # b = Fᵀ Cᵀ
    solution = normal_solve(hi_matmul(edited_factor, targets))
    residual = targets - hi_matmul(edited_factor.T, solution)
    solution = solution + normal_solve(hi_matmul(edited_factor, residual) - reg * solution)
    return solution.T


def derive_embedding(
    edited_kernels: Any, original_kernels: Any, concept_keys: Any, *, reg: float
) -> jax.Array:
    """The RECE embedding c′ of every row of ``concept_keys`` (see the module docstring for the math).

    Args:
      edited_kernels: the edited kernels K′_l: a list (or any pytree) of Flax-layout ``(d_in, *out_l)``
        arrays; 3-D attention kernels are flattened to ``(d_in, prod(out_l))``.
      original_kernels: the original kernels K_l, the same structure and shapes.
      concept_keys: C, ``[n, d_in]`` token rows of the concept's embedding.
      reg: λ_reg > 0.

    Returns:
      C′, float32 ``[n, d_in]``.

    Raises:
      ValueError: differing structures or shapes (naming the kernel), kernels with different d_in, no
        kernel, a key/kernel dimension mismatch, reg ≤ 0 or non-finite, non-finite values.
    """
    check_scale("reg", reg, positive=True)
    tree_lib.check_same_structure(
        edited_kernels, original_kernels, names=("edited_kernels", "original_kernels")
    )
    edited = tree_lib.leaves_with_paths(edited_kernels)
    original = [leaf for _, leaf in tree_lib.leaves_with_paths(original_kernels)]
    if not edited:
        raise ValueError("derive_embedding needs at least one kernel; edited_kernels is empty")
    news, olds, d_in = [], [], None
    for (path, new), old in zip(edited, original, strict=True):
        new = as_kernel(f"edited_kernels[{path!r}]", new)
        old = as_kernel(f"original_kernels[{path!r}]", old)
        if d_in is None:
            d_in, first = new.shape[0], path
        elif new.shape[0] != d_in:
            raise ValueError(
                f"all kernels must share d_in: edited_kernels[{path!r}] has d_in {new.shape[0]}, "
                f"edited_kernels[{first!r}] has {d_in}"
            )
        news.append(new)
        olds.append(old)
    keys = as_rows("concept_keys", concept_keys, d_in, allow_empty=False)
    return _derive(news, olds, keys, reg)


@jax.jit
def _derive(edited, original, concept_keys, reg):
    edited_gram = sum(hi_matmul(flat32(k), flat32(k).T) for k in edited)
    cross_gram = sum(hi_matmul(flat32(k), flat32(o).T) for k, o in zip(edited, original, strict=True))
    return embedding_map(edited_gram, cross_gram, concept_keys.astype(jnp.float32), reg)
