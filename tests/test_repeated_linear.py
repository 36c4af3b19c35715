"""Duplicated-row linear regression: weighted closed form = explicit duplication = gradient-descent limit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import repeated_linear as rl

SMALL = rl.LinearConfig(dim=6, hidden=20, budget=40, fraction=0.25, seeds=8, epochs=(1, 2, 5), ridge=1e-3)


def _problem(epochs: int):
    problem = rl.draw_problem(jax.random.key(0), SMALL)
    weights = rl.row_weights(SMALL, epochs)
    return problem, weights


@pytest.mark.parametrize("epochs", [1, 2, 5, 10])
def test_weights_spend_the_budget(epochs):
    weights = rl.row_weights(SMALL, epochs)
    assert weights.sum() == SMALL.budget
    repeated = weights[SMALL.budget :]
    assert set(np.unique(repeated)) <= {0.0, float(epochs)}
    assert (repeated > 0).sum() == round(SMALL.fraction * SMALL.budget / epochs)


@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_weighted_closed_form_equals_explicit_duplication(epochs):
    problem, weights = _problem(epochs)
    x, y = np.asarray(problem["x"], np.float64), np.asarray(problem["y"], np.float64)
    counts = weights.astype(int)
    x_dup, y_dup = np.repeat(x, counts, axis=0), np.repeat(y, counts)
    assert len(y_dup) == SMALL.budget
    explicit = np.linalg.solve(x_dup.T @ x_dup + SMALL.ridge * np.eye(SMALL.dim), x_dup.T @ y_dup)
    weighted = rl.weighted_ridge(problem["x"], problem["y"], jnp.asarray(weights), SMALL.ridge)
    np.testing.assert_allclose(np.asarray(weighted), explicit, rtol=1e-4, atol=1e-5)
    # gradient descent on the duplicated data's objective reaches it, and its closed-form path agrees
    lr = 0.2
    for steps in (7, 40):
        loop = rl.gradient_descent(
            problem["x"], problem["y"], jnp.asarray(weights), SMALL.ridge, lr=lr, steps=steps
        )
        path = rl.gd_trajectory(
            problem["x"], problem["y"], jnp.asarray(weights), SMALL.ridge, jnp.asarray([steps]), lr=lr
        )
        np.testing.assert_allclose(np.asarray(path[0]), np.asarray(loop), rtol=1e-3, atol=1e-5)
    limit = jax.jit(lambda x, y, w: rl.gradient_descent(x, y, w, SMALL.ridge, lr=lr, steps=3000))(
        problem["x"], problem["y"], jnp.asarray(weights)
    )
    np.testing.assert_allclose(np.asarray(limit), explicit, rtol=1e-3, atol=1e-4)


def test_test_mse_closed_form_matches_monte_carlo():
    config = dataclasses.replace(SMALL, noise=0.3)
    problem = rl.draw_problem(jax.random.key(1), config)
    theta = jnp.ones(config.dim) * 0.1
    rng = np.random.default_rng(0)
    fresh = 200_000
    x = rng.normal(size=(fresh, config.dim))
    hidden = rng.normal(size=fresh) * np.sqrt(float(problem["hidden_energy"]))  # zᵀγ ~ N(0, ‖γ‖²)
    y = x @ np.asarray(problem["beta"], np.float64) + hidden + config.noise * rng.normal(size=fresh)
    monte_carlo = np.mean((y - x @ np.asarray(theta, np.float64)) ** 2)
    assert float(rl.test_mse(theta, problem, config.noise)) == pytest.approx(monte_carlo, rel=0.02)


@pytest.mark.slow
def test_sweep_shapes_and_e1_is_plain_ridge():
    result = rl.sweep(dataclasses.replace(SMALL, curve_epochs=(1, 5), curve_points=6))
    assert result["test_mse"].shape == (3, SMALL.seeds) and result["curves"].shape[:2] == (2, SMALL.seeds)
    assert np.all(np.isfinite(result["test_mse"])) and np.all(result["test_mse"] > SMALL.noise**2)
    keys = jax.random.split(jax.random.key(0), SMALL.seeds)
    problem = rl.draw_problem(keys[3], SMALL)
    rows = rl.row_weights(SMALL, 1) > 0  # E = 1: N − m unique rows and m repeat candidates, once each
    assert rows.sum() == SMALL.budget
    x = np.asarray(problem["x"], np.float64)[rows]
    y = np.asarray(problem["y"], np.float64)[rows]
    theta = np.linalg.solve(x.T @ x + SMALL.ridge * np.eye(SMALL.dim), x.T @ y)
    expected = (
        np.sum((theta - np.asarray(problem["beta"])) ** 2) + float(problem["hidden_energy"]) + SMALL.noise**2
    )
    assert result["test_mse"][0, 3] == pytest.approx(expected, rel=1e-4)
    # the GD curve ends at the ridge solution's test error
    assert result["curves"][0, 3, -1] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"dim": 0}, "dim"),
        ({"fraction": 1.0}, "fraction"),
        ({"noise": -0.1}, "noise"),
        ({"epochs": ()}, "epochs"),
        ({"curve_epochs": (0,)}, "curve_epochs"),
        ({"seeds": 1.5}, "seeds"),
    ],
)
def test_config_errors_name_the_field(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(SMALL, **changes)


def test_row_weights_errors():
    with pytest.raises(ValueError, match="exceeds what the budget allows"):
        rl.row_weights(SMALL, 41)
    with pytest.raises(ValueError, match="rounds to zero sequences"):
        rl.row_weights(SMALL, 30)
