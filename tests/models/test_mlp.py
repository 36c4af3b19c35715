"""Tests for `unlearnx.models._mlp`."""

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


def _numpy_bn_forward(variables: dict, x: np.ndarray, *, train: bool, momentum: float):
    """float64 reference: Dense → BatchNorm (batch statistics, biased variance, ε = 1e-5, in train mode;
    running averages in eval mode) → ReLU per hidden layer; returns the logits and the new running stats."""
    params, stats = variables["params"], variables["batch_stats"]
    h = x.reshape(x.shape[0], -1).astype(np.float64)
    num_layers = sum(name.startswith("Dense_") for name in params)
    new_stats = {}
    for i in range(num_layers):
        layer = params[f"Dense_{i}"]
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i == num_layers - 1:
            break
        bn, running = params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"]
        if train:
            mean, var = h.mean(axis=0), h.var(axis=0)
            new_stats[f"BatchNorm_{i}"] = {
                "mean": momentum * np.asarray(running["mean"], np.float64) + (1 - momentum) * mean,
                "var": momentum * np.asarray(running["var"], np.float64) + (1 - momentum) * var,
            }
        else:
            mean, var = np.asarray(running["mean"], np.float64), np.asarray(running["var"], np.float64)
        h = (h - mean) / np.sqrt(var + 1e-5) * np.asarray(bn["scale"], np.float64) + np.asarray(bn["bias"])
        h = np.maximum(h, 0.0)
    return h, new_stats


def test_batch_norm_paths_and_float64_forward_in_both_modes():
    model = models.mlp((4, 4, 1), 3, hidden=(8, 6), batch_norm=True, bn_momentum=0.8)
    variables = model.init(jax.random.key(3))
    shapes = jax.tree.map(lambda a: a.shape, variables)
    assert shapes["params"]["BatchNorm_0"] == {"scale": (8,), "bias": (8,)}
    assert shapes["batch_stats"] == {"BatchNorm_0": {"mean": (8,), "var": (8,)},
                                     "BatchNorm_1": {"mean": (6,), "var": (6,)}}  # fmt: skip
    assert "BatchNorm_2" not in shapes["params"] and model.has_batch_stats and not model.stochastic
    noise = np.random.default_rng(2)
    variables = jax.tree.map(lambda a: jnp.asarray(a + 0.2 * np.abs(noise.normal(size=a.shape))), variables)
    x = np.random.default_rng(4).normal(size=(16, 4, 4, 1)).astype(np.float32)

    out, updated = model.apply(variables, jnp.asarray(x), train=True)
    expected, stats = _numpy_bn_forward(variables, x, train=True, momentum=0.8)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    for name, moments in stats.items():
        for key, value in moments.items():
            np.testing.assert_allclose(updated["batch_stats"][name][key], value, rtol=1e-4, atol=1e-5)
    eval_out = model.apply(updated, jnp.asarray(x))
    expected_eval, _ = _numpy_bn_forward(updated, x, train=False, momentum=0.8)
    np.testing.assert_allclose(eval_out, expected_eval, rtol=1e-4, atol=1e-4)
    assert not np.allclose(eval_out, out, atol=1e-3)  # the modes differ: running vs batch statistics


def test_batch_norm_with_dropout_is_stochastic_and_checks_momentum():
    model = models.mlp((5,), 2, hidden=(16,) * 4, dropout=0.5, batch_norm=True)
    assert model.stochastic and model.has_batch_stats
    variables = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 5))
    a, _ = model.apply(variables, x, train=True, rng=jax.random.key(1))
    b, _ = model.apply(variables, x, train=True, rng=jax.random.key(2))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="bn_momentum"):
        models.mlp((3,), 2, batch_norm=True, bn_momentum=1.0)
