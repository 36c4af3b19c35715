"""Tests for `unlearnx.models._cnn`, including BatchNorm statistics handling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import models

MOMENTUM = 0.99  # flax.nnx.BatchNorm default
EPS = 1e-5


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3)])
def test_output_shapes(input_shape):
    model = models.cnn(input_shape, 10)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
    assert jax.eval_shape(model.apply, abstract, x).shape == (3, 10)
    out, new_vars = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), abstract, x)
    assert out.shape == (3, 10)
    assert jax.tree.structure(new_vars) == jax.tree.structure(abstract)
    spatial = (input_shape[0] // 4) * (input_shape[1] // 4)
    assert abstract["params"]["Dense_0"]["kernel"].shape == (spatial * 64, 128)


def test_param_paths():
    model = models.cnn((8, 8, 1), 3, channels=(4, 6), hidden=5)
    shapes = jax.tree.map(lambda a: a.shape, jax.eval_shape(model.init, jax.random.key(0)))
    assert shapes == {
        "params": {
            "Conv_0": {"kernel": (3, 3, 1, 4)},
            "BatchNorm_0": {"scale": (4,), "bias": (4,)},
            "Conv_1": {"kernel": (3, 3, 4, 6)},
            "BatchNorm_1": {"scale": (6,), "bias": (6,)},
            "Dense_0": {"kernel": (2 * 2 * 6, 5), "bias": (5,)},
            "Dense_1": {"kernel": (5, 3), "bias": (3,)},
        },
        "batch_stats": {
            "BatchNorm_0": {"mean": (4,), "var": (4,)},
            "BatchNorm_1": {"mean": (6,), "var": (6,)},
        },
    }


def test_without_batch_norm_has_no_batch_stats_and_conv_bias():
    model = models.cnn((8, 8, 1), 3, channels=(4,), hidden=5, batch_norm=False)
    assert not model.has_batch_stats
    variables = jax.eval_shape(model.init, jax.random.key(0))
    assert set(variables) == {"params"}
    assert set(variables["params"]["Conv_0"]) == {"kernel", "bias"}


def test_too_small_input_raises():
    with pytest.raises(ValueError, match="too small"):
        models.cnn((2, 2, 1), 3, channels=(4, 4))


def _numpy_conv3x3_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for di in range(3):
        for dj in range(3):
            out += padded[:, di : di + h, dj : dj + w, :] @ kernel[di, dj]
    return out


@pytest.fixture(scope="module")
def bn_setup():
    model = models.cnn((8, 8, 1), 3, channels=(4,), hidden=8)
    variables = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    # Non-trivial running statistics so that the momentum update is visible.
    variables["batch_stats"] = {
        "BatchNorm_0": {
            "mean": jnp.asarray(rng.normal(size=4), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, size=4), jnp.float32),
        }
    }
    x = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
    return model, variables, x


def test_train_updates_batch_stats_with_momentum(bn_setup):
    model, variables, x = bn_setup
    _, new_vars = model.apply(variables, jnp.asarray(x), train=True)
    assert new_vars["params"] is variables["params"]
    h = _numpy_conv3x3_same(
        x.astype(np.float64), np.asarray(variables["params"]["Conv_0"]["kernel"], np.float64)
    )
    batch_mean = h.mean(axis=(0, 1, 2))
    batch_var = h.var(axis=(0, 1, 2))
    old = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"]["BatchNorm_0"])
    new = new_vars["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(
        new["mean"], MOMENTUM * old["mean"] + (1 - MOMENTUM) * batch_mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        new["var"], MOMENTUM * old["var"] + (1 - MOMENTUM) * batch_var, rtol=1e-5, atol=1e-6
    )


def test_eval_leaves_stats_and_uses_running_averages(bn_setup):
    model, variables, x = bn_setup
    before = jax.tree.map(np.asarray, variables["batch_stats"])
    out = model.apply(variables, jnp.asarray(x))
    assert isinstance(out, jax.Array)
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], before)
    # Running averages make eval outputs independent of the rest of the batch ...
    np.testing.assert_allclose(model.apply(variables, jnp.asarray(x[:1])), out[:1], rtol=1e-5, atol=1e-6)
    # ... unlike train mode, which normalises with batch statistics.
    out_train, new_vars = model.apply(variables, jnp.asarray(x), train=True)
    out_train_1, _ = model.apply(variables, jnp.asarray(x[:2]), train=True)
    assert not np.allclose(out_train_1, out_train[:2], atol=1e-4)
    assert not np.allclose(out_train, out, atol=1e-4)
    # Eval with the updated statistics gives a different output.
    assert not np.allclose(model.apply(new_vars, jnp.asarray(x)), out, atol=1e-6)
