"""Misspecified linear regression with duplicated rows: an analytic model of training on repeated data.

The linear companion of Hernandez et al. (2022), "Scaling Laws and Interpretability of Learning from Repeated
Data" (``experiments/repeated_data.py`` runs it beside the language models; spec §8 of
``shared/papers/repeated_data.md``). Features x ∈ ℝ^d and hidden z ∈ ℝ^h, both standard normal,

    y = xᵀβ + zᵀγ + ε,   ε ~ N(0, σ²),

and the model sees only x (misspecified: zᵀγ acts as noise that repeats with its row). A budget of N rows
holds N − m·E unique rows and m = min(round(f·N / E), ⌊N / E⌋) rows each duplicated E times
(:func:`unlearnx.data.repeated.repeat_count`, the LM mixture's rounding). Duplicating a row E times is
weighting it by E, so ridge regression on the duplicated data is

    θ̂ = (XᵀWX + λI)⁻¹ XᵀWy,   W = diag(1, …, 1, E, …, E)

over the distinct rows, and gradient descent on J(θ) = (1/N)[Σᵢ wᵢ (xᵢᵀθ − yᵢ)² + λ‖θ‖²] from θ₀ = 0 with
step η follows, with A = XᵀWX + λI = V diag(s) Vᵀ and c = 2η / N,

    θ_k = V diag((1 − (1 − c·s)^k) / s) Vᵀ XᵀWy  →  θ̂  (k → ∞, for 0 < c·s_max < 2).

For a fresh (x, z, ε) the test error has the closed form E[(y − xᵀθ)²] = ‖θ − β‖² + ‖γ‖² + σ².
Every seed is a separate draw of β, γ and the data; rows are drawn in fixed-size pools (N unique
candidates, ⌈f·N⌉ repeat candidates) with 0/1/E weights, so the whole sweep is one ``vmap`` over E and
seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx.data.repeated import repeat_count

__all__ = [
    "LinearConfig",
    "draw_problem",
    "gd_trajectory",
    "gradient_descent",
    "row_weights",
    "sweep",
    "test_mse",
    "weighted_ridge",
]


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """The duplicated-row regression sweep (defaults: the spec's suggested setting).

    Attributes:
        dim: d, the observed features.
        hidden: h, the hidden (unobserved) features.
        budget: N, the rows of one training set (duplicates counted).
        fraction: f ∈ [0, 1), the share of the budget spent on repeated rows.
        noise: σ, the label noise's standard deviation.
        hidden_energy: E‖γ‖², the misspecification's variance.
        ridge: λ ≥ 0.
        seeds: how many independent draws of β, γ and the data.
        epochs: the repeat counts E of the ridge sweep.
        curve_epochs: the repeat counts whose gradient-descent test-MSE curves are traced.
        curve_points: log-spaced points of each curve (1 to 10⁶ steps; duplicates dropped).

    Raises:
        ValueError: a field out of range (see ``__post_init__``).

    Examples:
        >>> LinearConfig(budget=100, fraction=0.2).hidden
        400
    """

    dim: int = 50
    hidden: int = 400
    budget: int = 400
    fraction: float = 0.2
    noise: float = 0.1
    hidden_energy: float = 1.0  # E‖γ‖²: the misspecification's variance
    ridge: float = 1e-6
    seeds: int = 100
    epochs: tuple[int, ...] = (1, 2, 3, 5, 8, 13, 20, 40, 80)
    curve_epochs: tuple[int, ...] = (1, 3, 8, 20)  # GD test-MSE curves
    curve_points: int = 40

    def __post_init__(self):
        """Raises ValueError (or TypeError) naming the first bad field: sizes and counts must be integers
        ≥ 1, ``fraction`` in [0, 1), ``noise``, ``hidden_energy`` and ``ridge`` finite and ≥ 0, and
        ``epochs`` / ``curve_epochs`` non-empty tuples of repeat counts ≥ 1 (:func:`row_weights` checks them
        against the budget)."""
        for name in ("dim", "hidden", "budget", "seeds", "curve_points"):
            checks.static_int(name, getattr(self, name), low=1)
        checks.static_number("fraction", self.fraction, low=0.0, high=1.0, high_open=True)
        checks.static_numbers(
            ((name, getattr(self, name)) for name in ("noise", "hidden_energy", "ridge")), low=0.0
        )
        for name in ("epochs", "curve_epochs"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} must name at least one repeat count")
            for value in values:
                checks.static_int(f"{name} entry", value, low=1)


def draw_problem(key: jax.Array, config: LinearConfig) -> dict[str, jax.Array]:
    """One seed: β ~ N(0, I/d), γ ~ N(0, (energy/h)·I), a pool of N unique and ⌈f·N⌉ repeat-candidate rows.

    Rows are x ~ N(0, I_d), z ~ N(0, I_h) and y = xᵀβ + zᵀγ + σε.

    Args:
        key: the seed's PRNG key.
        config: the sweep's configuration.

    Returns:
        ``{"x": [P, d], "y": [P], "beta": [d], "hidden_energy": ‖γ‖²}`` with P = N + ⌈f·N⌉.

    Examples:
        >>> import jax
        >>> problem = draw_problem(jax.random.key(0), LinearConfig(dim=3, hidden=5, budget=10, fraction=0.2))
        >>> problem["x"].shape, problem["y"].shape
        ((12, 3), (12,))
    """
    pool = config.budget + math.ceil(config.fraction * config.budget)
    k_beta, k_gamma, k_x, k_z, k_eps = jax.random.split(key, 5)
    beta = jax.random.normal(k_beta, (config.dim,)) / math.sqrt(config.dim)
    gamma = jax.random.normal(k_gamma, (config.hidden,)) * math.sqrt(config.hidden_energy / config.hidden)
    x = jax.random.normal(k_x, (pool, config.dim))
    z = jax.random.normal(k_z, (pool, config.hidden))
    y = x @ beta + z @ gamma + config.noise * jax.random.normal(k_eps, (pool,))
    return {"x": x, "y": y, "beta": beta, "hidden_energy": jnp.sum(gamma**2)}


def row_weights(config: LinearConfig, epochs: int) -> np.ndarray:
    """Weights over the pool: 1 on the first N − m·E unique rows, E on the first m repeat candidates.

    m = min(round(f·N / E), ⌊N / E⌋) (:func:`unlearnx.data.repeated.repeat_count`), so the weights sum to N.

    Args:
        config: the sweep's configuration (N = ``budget``, f = ``fraction``).
        epochs: E ≥ 1.

    Returns:
        float32 ``[N + ⌈f·N⌉]`` weights over :func:`draw_problem`'s pool.

    Raises:
        ValueError: a repeated subset that rounds to zero rows.

    Examples:
        >>> weights = row_weights(LinearConfig(budget=10, fraction=0.2), 2)  # m = 1 row repeated twice
        >>> weights.tolist(), float(weights.sum())
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0, 0.0], 10.0)
    """
    repeated = repeat_count(config.budget, config.fraction, epochs)
    weights = np.zeros(config.budget + math.ceil(config.fraction * config.budget), np.float32)
    weights[: config.budget - repeated * epochs] = 1.0
    weights[config.budget : config.budget + repeated] = epochs
    return weights


def _check_system(x: jax.Array, y: jax.Array, weights: jax.Array) -> None:
    """Shapes (static, so also under ``jit``): ``x`` ``[n, d]``, ``y`` and ``weights`` ``[n]``."""
    if jnp.ndim(x) != 2 or jnp.shape(y) != jnp.shape(x)[:1] or jnp.shape(weights) != jnp.shape(x)[:1]:
        raise ValueError(
            f"x must be [n, d] and y, weights [n]; got shapes {jnp.shape(x)}, {jnp.shape(y)}, "
            f"{jnp.shape(weights)}"
        )


def weighted_ridge(x: jax.Array, y: jax.Array, weights: jax.Array, ridge: float) -> jax.Array:
    """θ̂ = (XᵀWX + λI)⁻¹ XᵀWy with W = diag(weights) (a linear solve, no inverse).

    Args:
        x: X, ``[n, d]``.
        y: ``[n]``.
        weights: the rows' weights (multiplicities), ``[n]``.
        ridge: λ.

    Returns:
        θ̂, ``[d]``.

    Raises:
        ValueError: ``x`` not ``[n, d]``, or ``y`` / ``weights`` not ``[n]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> x, y = jnp.array([[1.0], [2.0]]), jnp.array([1.0, 1.0])
        >>> float(weighted_ridge(x, y, jnp.array([1.0, 1.0]), 0.0)[0])  # (1 + 2) / (1 + 4)
        0.6
        >>> float(weighted_ridge(x, y, jnp.array([3.0, 1.0]), 0.0)[0])  # row 1 three times: 5 / 7
        0.714286
    """
    _check_system(x, y, weights)
    gram = x.T @ (weights[:, None] * x) + ridge * jnp.eye(x.shape[1], dtype=x.dtype)
    return jnp.linalg.solve(gram, x.T @ (weights * y))


def gradient_descent(
    x: jax.Array, y: jax.Array, weights: jax.Array, ridge: float, *, lr: float, steps: int
) -> jax.Array:
    """θ after ``steps`` plain GD steps on J(θ) = (1/N)[Σ wᵢ(xᵢᵀθ − yᵢ)² + λ‖θ‖²] from 0, N = Σ wᵢ.

    Args:
        x: X, ``[n, d]``.
        y: ``[n]``.
        weights: the rows' weights, ``[n]``.
        ridge: λ.
        lr: the step η.
        steps: how many steps.

    Returns:
        θ_steps, ``[d]``.

    Raises:
        ValueError: ``x`` not ``[n, d]``, or ``y`` / ``weights`` not ``[n]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> x, y, w = jnp.array([[1.0], [2.0]]), jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0])
        >>> round(float(gradient_descent(x, y, w, 0.0, lr=0.2, steps=100)[0]), 5)  # → θ̂ = 0.6
        0.6
    """
    _check_system(x, y, weights)
    count = jnp.sum(weights)

    def step(_, theta):
        grad = 2.0 / count * (x.T @ (weights * (x @ theta - y)) + ridge * theta)
        return theta - lr * grad

    return jax.lax.fori_loop(0, steps, step, jnp.zeros(x.shape[1], x.dtype))


def gd_trajectory(
    x: jax.Array, y: jax.Array, weights: jax.Array, ridge: float, steps: jax.Array, *, lr: float | None = None
) -> jax.Array:
    """θ_k of :func:`gradient_descent` at every k in ``steps`` in closed form (module docstring), ``[K, d]``.

    The default step is η = N / (2 s_max), i.e. c·s_max = 1.

    Args:
        x: X, ``[n, d]``.
        y: ``[n]``.
        weights: the rows' weights, ``[n]``.
        ridge: λ.
        steps: the step counts k, ``[K]`` (any non-negative reals).
        lr: η, or ``None`` for N / (2 s_max).

    Returns:
        θ_k for every k, ``[K, d]``.

    Raises:
        ValueError: ``x`` not ``[n, d]``, or ``y`` / ``weights`` not ``[n]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> x, y, w = jnp.array([[1.0], [2.0]]), jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0])
        >>> # c·s = (2·0.2/2)·5 = 1: one step reaches θ̂ = 0.6, as gradient_descent(..., steps=1) does
        >>> gd_trajectory(x, y, w, 0.0, jnp.array([0.0, 1.0]), lr=0.2).tolist()
        [[0.0], [0.6]]
    """
    _check_system(x, y, weights)
    gram = x.T @ (weights[:, None] * x) + ridge * jnp.eye(x.shape[1], dtype=x.dtype)
    spectrum, basis = jnp.linalg.eigh(gram)
    scale = 1.0 / spectrum[-1] if lr is None else 2.0 * lr / jnp.sum(weights)
    projected = basis.T @ (x.T @ (weights * y))
    steps = jnp.asarray(steps, x.dtype)[:, None]
    # (1 − c·s)^k through log1p (exact for tiny c·s); k = 0 is θ₀ = 0 even where c·s = 1 (log1p(−1) = −∞).
    shrink = jnp.where(steps == 0, 1.0, jnp.exp(steps * jnp.log1p(-scale * spectrum)[None, :]))
    return ((1.0 - shrink) / spectrum * projected) @ basis.T


def test_mse(theta: jax.Array, problem: dict[str, jax.Array], noise: float) -> jax.Array:
    """The test error of θ on a fresh row, E[(y − xᵀθ)²] = ‖θ − β‖² + ‖γ‖² + σ².

    Args:
        theta: θ, ``[..., d]``.
        problem: :func:`draw_problem`'s result (its ``beta`` and ``hidden_energy``).
        noise: σ.

    Returns:
        The test MSE, shaped like ``theta`` without its last axis.

    Examples:
        >>> import jax.numpy as jnp
        >>> problem = {"beta": jnp.array([1.0, 0.0]), "hidden_energy": jnp.array(0.5)}
        >>> float(test_mse(jnp.zeros(2), problem, noise=0.5))  # 1 + 0.5 + 0.25
        1.75
    """
    return jnp.sum((theta - problem["beta"]) ** 2, axis=-1) + problem["hidden_energy"] + noise**2


@functools.lru_cache(maxsize=8)
def _compiled_sweep(config: LinearConfig):
    """The jitted ridge sweep and GD-curve sweep for one config (cached, so a rerun does not recompile).

    They are two separate computations on purpose: in one program XLA's CPU runtime may run the batched
    LAPACK solve and eigendecomposition concurrently, which was seen to deadlock in OpenBLAS.
    """

    def problems(keys):
        return jax.vmap(lambda k: draw_problem(k, config))(keys)

    def one(problem, w):
        return test_mse(weighted_ridge(problem["x"], problem["y"], w, config.ridge), problem, config.noise)

    @jax.jit
    def ridge_sweep(keys, weights):
        return jax.vmap(jax.vmap(one, in_axes=(0, None)), in_axes=(None, 0))(problems(keys), weights)

    @jax.jit
    def curve_sweep(keys, weights, steps):
        def curve(problem, w):
            thetas = gd_trajectory(problem["x"], problem["y"], w, config.ridge, steps)
            return test_mse(thetas, problem, config.noise)

        return jax.vmap(jax.vmap(curve, in_axes=(0, None)), in_axes=(None, 0))(problems(keys), weights)

    return ridge_sweep, curve_sweep


def sweep(config: LinearConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Test MSE of the ridge solution for every E and seed, and GD test-MSE curves for ``curve_epochs``.

    Args:
        config: the sweep's configuration.
        seed: the root seed (seed i of the sweep uses ``split(key(seed), config.seeds)[i]``).

    Returns:
        ``{"epochs": [nE], "test_mse": [nE, seeds], "repeated_rows": [nE], "curve_steps": [K],
        "curve_epochs": [nC], "curves": [nC, seeds, K]}``; the f = 0 reference is ``epochs`` = 1.

    Raises:
        ValueError: a repeated subset that rounds to zero rows (:func:`unlearnx.data.repeated.repeat_count`).

    Examples:
        >>> from unlearnx import repeated_linear
        >>> config = repeated_linear.LinearConfig(dim=4, hidden=8, budget=40, seeds=3, epochs=(1, 4),
        ...                                       curve_epochs=(1, 4), curve_points=5)
        >>> result = repeated_linear.sweep(config)
        >>> result["test_mse"].shape, result["repeated_rows"].tolist()
        ((2, 3), [8, 2])

    References:
        Hernandez et al., `Scaling Laws and Interpretability of Learning from Repeated Data
        <https://arxiv.org/abs/2205.10487>`_, 2022.
    """
    keys = jax.random.split(jax.random.key(seed), config.seeds)
    weights = jnp.asarray(np.stack([row_weights(config, e) for e in config.epochs]))
    steps = np.unique(np.round(np.logspace(0, 6, config.curve_points))).astype(np.float32)
    curve_weights = jnp.asarray(np.stack([row_weights(config, e) for e in config.curve_epochs]))
    ridge_sweep, curve_sweep = _compiled_sweep(config)
    per_epoch = np.asarray(ridge_sweep(keys, weights), np.float64)
    curves = np.asarray(curve_sweep(keys, curve_weights, steps), np.float64)
    return {
        "epochs": np.asarray(config.epochs),
        "repeated_rows": np.asarray([repeat_count(config.budget, config.fraction, e) for e in config.epochs]),
        "test_mse": per_epoch,
        "curve_epochs": np.asarray(config.curve_epochs),
        "curve_steps": steps,
        "curves": curves,
    }
