"""Tests for `unlearnx.models.mlp`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import models


def _numpy_forward(params: dict, x: np.ndarray) -> np.ndarray:
    h = x.reshape(x.shape[0], -1).astype(np.float64)
    num_layers = len(params)
    for i in range(num_layers):
        layer = params[f"Dense_{i}"]
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < num_layers - 1:
            h = np.maximum(h, 0.0)
    return h


def test_param_paths_and_shapes():
    model = models.mlp((28, 28, 1), 10)
    variables = jax.eval_shape(model.init, jax.random.key(0))
    shapes = jax.tree.map(lambda a: a.shape, variables)
    assert shapes == {
        "params": {
            "Dense_0": {"kernel": (784, 256), "bias": (256,)},
            "Dense_1": {"kernel": (256, 256), "bias": (256,)},
            "Dense_2": {"kernel": (256, 10), "bias": (10,)},
        }
    }
    assert model.name == "mlp"
    assert not model.has_batch_stats
    assert not model.stochastic


def test_forward_matches_numpy_float64():
    model = models.mlp((6, 5, 2), 7, hidden=(32, 16, 8))
    variables = model.init(jax.random.key(1))
    x = np.random.default_rng(0).normal(size=(4, 6, 5, 2)).astype(np.float32)
    # Random biases so the bias path is exercised too (flax initialises them to zero).
    noise = np.random.default_rng(1)
    variables = jax.tree.map(
        lambda a: jnp.asarray(a + 0.1 * noise.normal(size=a.shape), jnp.float32), variables
    )
    out = model.apply(variables, jnp.asarray(x))
    expected = _numpy_forward(variables["params"], x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # train mode without dropout is the same function
    out_train, same = model.apply(variables, jnp.asarray(x), train=True)
    np.testing.assert_allclose(out_train, out, rtol=1e-6)
    assert same is variables


@pytest.fixture(scope="module")
def dropout_model():
    model = models.mlp((10,), 4, hidden=(64,), dropout=0.5)
    variables = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 10))
    return model, variables, x


def test_dropout_train_depends_on_rng(dropout_model):
    model, variables, x = dropout_model
    assert model.stochastic
    out_a, _ = model.apply(variables, x, train=True, rng=jax.random.key(1))
    out_a2, _ = model.apply(variables, x, train=True, rng=jax.random.key(1))
    out_b, _ = model.apply(variables, x, train=True, rng=jax.random.key(2))
    np.testing.assert_array_equal(out_a, out_a2)
    assert not np.allclose(out_a, out_b)


def test_dropout_eval_is_deterministic(dropout_model):
    model, variables, x = dropout_model
    out = model.apply(variables, x)
    np.testing.assert_array_equal(out, model.apply(variables, x, rng=jax.random.key(7)))
    np.testing.assert_allclose(out, _numpy_forward(variables["params"], np.asarray(x)), rtol=1e-5, atol=1e-5)


def test_dropout_missing_rng_raises(dropout_model):
    model, variables, x = dropout_model
    with pytest.raises(ValueError, match="rng"):
        model.apply(variables, x, train=True)


def test_dropout_under_jit(dropout_model):
    model, variables, x = dropout_model
    apply = jax.jit(model.apply, static_argnames="train")
    out_j, _ = apply(variables, x, train=True, rng=jax.random.key(1))
    out, _ = model.apply(variables, x, train=True, rng=jax.random.key(1))
    np.testing.assert_allclose(out_j, out, rtol=1e-5, atol=1e-6)


def test_invalid_dropout_rate():
    with pytest.raises(ValueError, match="dropout"):
        models.mlp((3,), 2, dropout=1.0)
