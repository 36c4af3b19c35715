"""Float32 linear algebra that stays accurate on the ill-conditioned systems of concept erasure (private)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["hi_matmul", "solve_refined"]


def hi_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full float32 precision (TPUs and GPUs otherwise use bf16/TF32 passes)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def solve_refined(lhs: jax.Array, rhs: jax.Array, residual: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """x = lhs⁻¹ rhs by an LU solve, then one step of iterative refinement, x += lhs⁻¹ residual(x).

    ``residual(x)`` must compute rhs − lhs·x *without* the formed ``lhs``, from the factors it was built
    of (e.g. Σ K′(Kᵀc − K′ᵀx) − λ_reg x). Forming λ_reg I + Σ K′K′ᵀ in float32 rounds away what an
    ill-conditioned system needs; the refined x is accurate to ~ε·κ instead of ~ε·κ², as a QR solution
    would be, at the price of three thin products.
    """
    factors = jax.scipy.linalg.lu_factor(lhs)
    solution = jax.scipy.linalg.lu_solve(factors, rhs)
    return solution + jax.scipy.linalg.lu_solve(factors, residual(solution))
