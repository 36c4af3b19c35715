"""Tests for the pure functional bridge (`unlearnx.models._bridge`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from models_testutil import assert_plain_tree

from unlearnx import models


def test_init_plain_dicts_with_string_keys(small):
    model, _ = small
    variables = model.init(jax.random.key(0))
    assert_plain_tree(variables)
    expected = {"params", "batch_stats"} if model.has_batch_stats else {"params"}
    assert set(variables) == expected


def test_init_deterministic_rng_dependent_and_jittable(small):
    model, _ = small
    init = jax.jit(model.init)
    a = model.init(jax.random.key(0))
    b = init(jax.random.key(0))
    c = init(jax.random.key(1))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)
    assert jax.tree.structure(a) == jax.tree.structure(c)
    diffs = [
        not np.allclose(x, y)
        for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(c["params"]), strict=True)
    ]
    assert any(diffs)


def test_output_shapes_and_jit_matches_eager(small):
    model, x = small
    variables = model.init(jax.random.key(0))
    rng = jax.random.key(3)
    logits = model.apply(variables, x)
    assert logits.shape == (2, 5)
    assert logits.dtype == jnp.float32
    jitted = jax.jit(model.apply, static_argnames="train")
    np.testing.assert_allclose(jitted(variables, x), logits, rtol=1e-5, atol=1e-6)

    out, new_vars = model.apply(variables, x, train=True, rng=rng)
    out_j, new_vars_j = jitted(variables, x, train=True, rng=rng)
    assert out.shape == (2, 5)
    assert jax.tree.structure(new_vars) == jax.tree.structure(variables)
    np.testing.assert_allclose(out_j, out, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_vars_j, new_vars)


def test_grad_of_cross_entropy(small):
    model, x = small
    variables = model.init(jax.random.key(0))
    labels = jnp.array([1, 3])

    def loss(params):
        out = model.apply({**variables, "params": params}, x, train=True, rng=jax.random.key(1))
        logits = out[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(variables["params"]), strict=True):
        assert g.shape == p.shape
        assert np.all(np.isfinite(g))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


def test_no_batch_stats_train_returns_same_variables():
    model = models.mlp((3,), 2, hidden=(4,))
    variables = model.init(jax.random.key(0))
    _, new_vars = model.apply(variables, jnp.ones((2, 3)), train=True)
    assert new_vars is variables


class _Counting(nnx.Module):
    traces = 0

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.Dense_0 = nnx.Linear(3, 2, rngs=rngs)
        self.BatchNorm_0 = nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x, *, train, rngs=None):
        type(self).traces += 1
        return self.BatchNorm_0(self.Dense_0(x), use_running_average=not train)


def test_jit_does_not_retrace():
    model = models.from_module(_Counting, "counting")
    variables = model.init(jax.random.key(0))
    apply = jax.jit(model.apply, static_argnames="train")
    _Counting.traces = 0
    for i in range(3):
        x = jnp.full((4, 3), float(i))
        apply(variables, x)
        _, variables = apply(variables, x, train=True)
    assert _Counting.traces == 2  # one trace per value of `train`


def test_traced_train_flag_raises_helpful_error():
    model = models.mlp((3,), 2, hidden=(4,))
    variables = model.init(jax.random.key(0))
    with pytest.raises(TypeError, match="static_argnames"):
        jax.jit(model.apply)(variables, jnp.ones((1, 3)), train=True)


def test_eval_uses_running_stats_numerically():
    model = models.from_module(_Counting, "counting")
    variables = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    stats = {"BatchNorm_0": {"mean": rng.normal(size=2), "var": rng.uniform(0.5, 2.0, size=2)}}
    variables = {**variables, "batch_stats": jax.tree.map(jnp.asarray, stats)}
    x = rng.normal(size=(4, 3)).astype(np.float32)
    out = model.apply(variables, jnp.asarray(x))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    h = x.astype(np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    bn = p["BatchNorm_0"]
    expected = (h - stats["BatchNorm_0"]["mean"]) / np.sqrt(stats["BatchNorm_0"]["var"] + 1e-5)
    expected = expected * bn["scale"] + bn["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


class _StatefulDropout(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.Dense_0 = nnx.Linear(3, 2, rngs=rngs)
        self.Dropout_0 = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, *, train, rngs=None):
        return self.Dropout_0(self.Dense_0(x), deterministic=not train)


def test_from_module_rejects_rng_state():
    with pytest.raises(ValueError, match="neither nnx.Param nor nnx.BatchStat"):
        models.from_module(_StatefulDropout, "bad")


def test_mismatched_variables_raise():
    model = models.mlp((3,), 2, hidden=(4,))
    variables = model.init(jax.random.key(0))
    params = dict(variables["params"])
    params["Extra"] = {"kernel": jnp.zeros(2)}
    del params["Dense_0"]
    with pytest.raises(ValueError, match="missing=.*Dense_0/bias.*unexpected=.*Extra/kernel"):
        model.apply({"params": params}, jnp.ones((1, 3)))


def test_num_params_and_model_is_frozen():
    model = models.mlp((3,), 2, hidden=(4,))
    variables = model.init(jax.random.key(0))
    expected = 3 * 4 + 4 + 4 * 2 + 2
    assert models.num_params(variables) == expected
    assert models.num_params(variables["params"]) == expected
    assert model.num_params(jax.eval_shape(model.init, jax.random.key(0))) == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "other"  # type: ignore[misc]


class _Listed(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(3, 3, rngs=rngs) for _ in range(2)])

    def __call__(self, x, *, train, rngs=None):
        for layer in self.layers:
            x = layer(x)
        return x


def test_integer_nnx_keys_become_strings():
    model = models.from_module(_Listed, "listed")
    variables = model.init(jax.random.key(0))
    assert_plain_tree(variables)
    assert set(variables["params"]["layers"]) == {"0", "1"}
    p = variables["params"]["layers"]
    x = jnp.ones((2, 3))
    expected = (x @ p["0"]["kernel"] + p["0"]["bias"]) @ p["1"]["kernel"] + p["1"]["bias"]
    np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
