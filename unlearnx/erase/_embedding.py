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
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx.erase._checks import as_kernel, as_rows, check_scale, flat32, host64, overflow_cause
from unlearnx.erase._linalg import hi_matmul, matmul_minus, serially, solve_spd_refined

__all__ = ["derive_embedding", "mapped_embedding"]


def mapped_embedding(
    mapping: jax.Array,
    mapped_gram: jax.Array,
    current_gram: jax.Array,
    concept_keys: jax.Array,
    reg: float | jax.Array,
) -> jax.Array:
    """C′ for edited kernels K′_l = M K_l, from M, Σ K′Kᵀ = M S and Σ K′K′ᵀ = M S Mᵀ (S = Σ K Kᵀ).

    c′ = (λ_reg I + M S Mᵀ)⁻¹ M S c by Cholesky (SPD), refined once with the residual M S (c − Mᵀx) − λ_reg x,
    whose last product and subtraction cancel heavily once M is near-singular (after a few rounds): they are
    computed to ~ε of the residual (:func:`unlearnx.erase._linalg.matmul_minus`), which brings RECE's
    float32 error on SD shapes from 1.4e-4 to 6e-5.
    """
    d_in = mapping.shape[0]
    lhs = reg * jnp.eye(d_in, dtype=jnp.float32) + 0.5 * (current_gram + current_gram.T)

    def residual(x):
        return matmul_minus(mapped_gram, concept_keys.T - hi_matmul(mapping.T, x), reg * x)

    return solve_spd_refined(lhs, hi_matmul(mapped_gram, concept_keys.T), residual).T


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
            kernel, a key/kernel dimension mismatch, reg ≤ 0 or non-finite, non-finite values, or a non-finite
            C′ from finite inputs (float32 overflow, naming the quantity; all checked when not traced).
        TypeError: a traced ``reg`` (hyper-parameters are static).

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import erase
        >>> kernels = [jnp.eye(2), 2 * jnp.eye(2)]  # unedited: c′ = (λ_reg + 5)⁻¹ · 5 c
        >>> erase.derive_embedding(kernels, kernels, jnp.array([[2.0, 4.0]]), reg=5.0).tolist()
        [[1.0, 2.0]]

    References:
        Gong et al., `Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models
        <https://arxiv.org/abs/2407.12383>`_, ECCV 2024.
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
    embedding = serially(_derive, news, olds, keys, reg)
    if not checks.is_traced(embedding):
        checks.check_output(
            "derive_embedding: the embedding C′", embedding, _EmbeddingPeaks(news, olds, keys)
        )
    return embedding


class _EmbeddingPeaks:
    """The overflow diagnosis of :func:`derive_embedding`, computed on the host only when formatted."""

    def __init__(self, edited, original, keys):
        self.args = (edited, original, keys)

    def __str__(self) -> str:
        edited = [host64(k) for k in self.args[0]]
        original = [host64(k) for k in self.args[1]]
        keys = host64(self.args[2])
        return overflow_cause(
            {
                "the edited kernels' Gram matrix Σ K′K′ᵀ": lambda: sum(k @ k.T for k in edited),
                "the original outputs K_lᵀ Cᵀ": lambda: np.concatenate([o.T @ keys.T for o in original]),
                "the right-hand side Σ K′ K_lᵀ Cᵀ": lambda: sum(
                    e @ (o.T @ keys.T) for e, o in zip(edited, original, strict=True)
                ),
            }
        )


@jax.jit
def _derive(edited, original, concept_keys, reg):
    edited = [flat32(k) for k in edited]
    original = [flat32(k) for k in original]
    concept_keys = concept_keys.astype(jnp.float32)
    d_in = concept_keys.shape[1]
    lhs = reg * jnp.eye(d_in, dtype=jnp.float32) + sum(hi_matmul(k, k.T) for k in edited)
    targets = [hi_matmul(o.T, concept_keys.T) for o in original]  # K_lᵀ Cᵀ
    rhs = sum(hi_matmul(k, t) for k, t in zip(edited, targets, strict=True))

    def residual(x):
        misses = [t - hi_matmul(k.T, x) for k, t in zip(edited, targets, strict=True)]
        return sum(hi_matmul(k, m) for k, m in zip(edited, misses, strict=True)) - reg * x

    return solve_spd_refined(0.5 * (lhs + lhs.T), rhs, residual).T
