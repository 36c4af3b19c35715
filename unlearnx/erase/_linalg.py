"""Float32 linear algebra that stays accurate on the ill-conditioned systems of concept erasure (private)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx._validation import is_traced

__all__ = [
    "gram",
    "hi_matmul",
    "matmul_minus",
    "serial_lapack",
    "serially",
    "solve_refined",
    "solve_spd_refined",
]


@functools.cache
def _blas_libraries():
    """threadpoolctl's controller of the loaded BLAS libraries, SciPy's among them (``None`` without
    threadpoolctl). ``scipy.linalg`` is imported first: XLA:CPU's LAPACK calls use SciPy's bundled OpenBLAS,
    which is otherwise loaded only by the first factorisation."""
    try:
        import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jaxlib's LAPACK kernels call)
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.ThreadpoolController()


@contextlib.contextmanager
def serial_lapack() -> Iterator[None]:
    """Runs the enclosed computations with the BLAS/LAPACK libraries limited to one thread each.

    On CPU, XLA runs a Cholesky or LU factorisation as a call into SciPy's OpenBLAS, whose own thread pool
    then competes with XLA's for the same cores: a 768 × 768 Cholesky costs 70 ms of CPU time on 2 busy
    cores with OpenBLAS's two threads and 5 ms with one. The erase transforms' factorisations are small
    (order ≤ d_in), so one thread loses nothing. Only the enclosed *execution* is affected: callers block
    on the results inside the block. Accelerators' solvers are unaffected.
    """
    libraries = _blas_libraries()
    if libraries is None:
        yield
        return
    with libraries.limit(limits=1, user_api="blas"):
        yield


def serially(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed under :func:`serial_lapack`: concrete results are waited for inside
    it (traced ones are returned as they are: an outer ``jit`` runs them later, on OpenBLAS's defaults)."""
    with serial_lapack():
        result = fn(*args, **kwargs)
        if not is_traced(result):
            jax.block_until_ready(result)
    return result


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


def solve_spd_refined(
    lhs: jax.Array, rhs: jax.Array, residual: Callable[[jax.Array], jax.Array]
) -> jax.Array:
    """:func:`solve_refined` for a symmetric positive definite ``lhs``, by a Cholesky factorisation.

    Cholesky costs half an LU and its triangular solves are cheap (on CPU the whole solve is ~4× faster
    than LAPACK's pivoted LU at d = 768). When float32 rounding makes a near-singular ``lhs`` lose
    definiteness, the factor has NaNs and LU solves are taken instead (``lax.cond``: one branch runs).
    """
    factor = jnp.linalg.cholesky(lhs)
    definite = jnp.all(jnp.isfinite(jnp.diagonal(factor)))  # a failed factorisation is all NaN

    def solve(vectors):  # only the solves branch: the residual, often the costliest part, stays outside
        return jax.lax.cond(
            definite,
            lambda b: jax.scipy.linalg.cho_solve((factor, True), b),
            lambda b: jnp.linalg.solve(lhs, b),
            vectors,
        )

    solution = solve(rhs)
    return solution + solve(residual(solution))


def gram(kernels: list[jax.Array], *, block: int = 128) -> jax.Array:
    """S = Σ_l K_l K_lᵀ (symmetric, ``d_in × d_in``) at full float32 precision, from its lower block triangle.

    The rows of every kernel are split into b ≈ d_in / ``block`` slices and only the blocks S_ij = Σ_l
    K_l[i] K_l[j]ᵀ with j ≤ i are multiplied, (b + 1) / (2b) of the full product's work (7/12 for SD's
    d_in = 768); the upper triangle is their transpose, so S is exactly symmetric.
    """
    d_in = kernels[0].shape[0]
    edges = np.linspace(0, d_in, max(1, d_in // block) + 1).astype(int)
    blocks = len(edges) - 1
    lower = {}
    for i in range(blocks):
        rows_i = [k[edges[i] : edges[i + 1]] for k in kernels]
        for j in range(i + 1):
            lower[i, j] = sum(
                hi_matmul(a, k[edges[j] : edges[j + 1]].T) for a, k in zip(rows_i, kernels, strict=True)
            )
    diagonal = {i: 0.5 * (lower[i, i] + lower[i, i].T) for i in range(blocks)}
    rows = [
        jnp.concatenate(
            [diagonal[i] if i == j else lower[i, j] if j < i else lower[j, i].T for j in range(blocks)],
            axis=1,
        )
        for i in range(blocks)
    ]
    return jnp.concatenate(rows, axis=0)


def _slices(a: jax.Array, axis: int, bits: int, count: int) -> list[jax.Array]:
    """a ≈ Σ slices, each slice's entries integer multiples of 2^(e − bits) with 2^e > max |remainder| along
    ``axis`` (so each slice has ≤ bits + 1 significant bits); slice s + 1 splits what slice s left over."""
    slices, rest = [], a
    for _ in range(count):
        _, exponent = jnp.frexp(jnp.max(jnp.abs(rest), axis=axis, keepdims=True))
        shifter = jnp.ldexp(jnp.float32(1.5), exponent - bits + 23)  # its ulp is 2^(e − bits)
        head = (rest + shifter) - shifter
        slices.append(head)
        rest = rest - head
    return slices


def matmul_minus(a: jax.Array, b: jax.Array, c: jax.Array, *, count: int = 5) -> jax.Array:
    """a @ b − c for float32 ``a`` ``[m, k]``, ``b`` ``[k, n]``, ``c`` ``[m, n]``, accurate to ~ε|a @ b − c|.

    A residual b − A x of an ill-conditioned system cancels: in float32 its error ε|a||b| can be as large
    as the residual. Here a and b are split into ``count`` slices of ⌊(24 − ⌈log₂ k⌉)/2⌋ bits, scaled per row
    of a and per column of b (Ozaki's scheme), so every slice product is exact in float32 whatever the
    summation order; the products that matter (s + t ≤ count + 1) and −c are then added by Neumaier's
    compensated summation, and the dropped terms are ~2^(−count·bits) |a||b|.
    """
    bits = (24 - max(1, int(np.ceil(np.log2(a.shape[1]))))) // 2
    left, right = _slices(a, 1, bits, count), _slices(b, 0, bits, count)
    terms = [hi_matmul(left[s], right[t]) for s in range(count) for t in range(count - s)]
    terms.append(-c)
    total, compensation = terms[0], jnp.zeros_like(terms[0])
    for term in terms[1:]:
        summed = total + term
        compensation = compensation + jnp.where(
            jnp.abs(total) >= jnp.abs(term), (total - summed) + term, (term - summed) + total
        )
        total = summed
    return total + compensation
