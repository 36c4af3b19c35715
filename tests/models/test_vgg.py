"""Tests for `unlearnx.models._vgg` (full size only abstractly; forward passes at width 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_testutil import assert_plain_tree

from unlearnx import models

# VGG-19 conv widths as multiples of the base width; "M" is a 2x2 max-pool.
LAYOUT = [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8]
NUM_CONVS = 16


def _expected_vgg19_params(width: int, in_channels: int, num_classes: int, batch_norm: bool = True) -> int:
    """Parameter count of the CIFAR VGG-19 derived from the architecture by hand."""
    total = 0
    cin = in_channels
    for item in LAYOUT:
        if item == "M":
            continue
        cout = width * item
        total += 3 * 3 * cin * cout  # conv kernel
        total += 2 * cout if batch_norm else cout  # BN scale + bias, or conv bias
        cin = cout
    return total + (cin + 1) * num_classes  # dense head on the pooled 8w features


@pytest.mark.parametrize(
    ("num_classes", "expected"),
    # 20,018,880 conv + 11,008 BN + 513 * num_classes head.
    [(10, 20_035_018), (100, 20_081_188)],
)
def test_param_count_full_size(num_classes, expected):
    assert _expected_vgg19_params(64, 3, num_classes) == expected
    model = models.vgg19((32, 32, 3), num_classes)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    assert models.num_params(abstract) == expected
    assert model.num_params(abstract) == expected
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(model.apply, abstract, x).shape == (2, num_classes)


def test_without_batch_norm_full_size():
    model = models.vgg19((32, 32, 3), 10, batch_norm=False)
    assert not model.has_batch_stats
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    assert set(abstract) == {"params"}
    assert set(abstract["params"]) == {*(f"Conv_{i}" for i in range(NUM_CONVS)), "Dense_0"}
    assert set(abstract["params"]["Conv_0"]) == {"kernel", "bias"}
    expected = _expected_vgg19_params(64, 3, 10, batch_norm=False)
    assert expected == 20_018_880 + 5_504 + 5_130
    assert models.num_params(abstract) == expected
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out, new_vars = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), abstract, x)
    assert out.shape == (2, 10)
    assert jax.tree.structure(new_vars) == jax.tree.structure(abstract)


@pytest.mark.parametrize("input_shape", [(32, 32, 3), (16, 16, 1), (24, 40, 3)])
def test_output_shapes(input_shape):
    model = models.vgg19(input_shape, 7, width=8)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
    assert jax.eval_shape(model.apply, abstract, x).shape == (3, 7)
    out, new_vars = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), abstract, x)
    assert out.shape == (3, 7)
    assert jax.tree.structure(new_vars) == jax.tree.structure(abstract)


def test_too_small_input_raises():
    with pytest.raises(ValueError, match="too small"):
        models.vgg19((8, 8, 3), 10)
    with pytest.raises(ValueError, match="height, width, channels"):
        models.vgg19((32, 32), 10)


def test_get_builds_vgg19():
    model = models.get("vgg19", [32, 32, 3], 10, width=8, batch_norm=False)
    assert isinstance(model, models.Model)
    assert model.name == "vgg19"
    assert not model.has_batch_stats
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    assert models.num_params(abstract) == _expected_vgg19_params(8, 3, 10, batch_norm=False)


@pytest.fixture(scope="module")
def small_vgg():
    model = models.vgg19((32, 32, 3), 5, width=4)
    init = jax.jit(model.init)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    return model, init, init(jax.random.key(0)), x


def test_param_paths(small_vgg):
    model, _, variables, _ = small_vgg
    assert model.name == "vgg19"
    assert model.has_batch_stats
    assert not model.stochastic
    assert_plain_tree(variables)
    assert set(variables) == {"params", "batch_stats"}
    shapes = jax.tree.map(lambda a: a.shape, variables)
    widths = [4 * m for m in LAYOUT if m != "M"]
    cin = 3
    for i, cout in enumerate(widths):
        assert shapes["params"][f"Conv_{i}"] == {"kernel": (3, 3, cin, cout)}, i
        assert shapes["params"][f"BatchNorm_{i}"] == {"scale": (cout,), "bias": (cout,)}, i
        assert shapes["batch_stats"][f"BatchNorm_{i}"] == {"mean": (cout,), "var": (cout,)}, i
        cin = cout
    assert shapes["params"]["Dense_0"] == {"kernel": (32, 5), "bias": (5,)}
    assert len(shapes["params"]) == 2 * NUM_CONVS + 1
    assert len(shapes["batch_stats"]) == NUM_CONVS
    assert models.num_params(variables) == _expected_vgg19_params(4, 3, 5)


def test_init_deterministic_and_he_normal(small_vgg):
    _, init, variables, _ = small_vgg
    jax.tree.map(np.testing.assert_array_equal, init(jax.random.key(0)), variables)
    other = init(jax.random.key(1))
    assert not np.array_equal(other["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["kernel"])
    # He normal over fan_out: std = sqrt(2 / (3 * 3 * cout)); 9216 samples for the last conv.
    kernel = np.asarray(variables["params"]["Conv_15"]["kernel"])
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 32)), rtol=0.05)
    assert abs(kernel.mean()) < 0.01


def test_forward_train_and_jit(small_vgg):
    model, _, variables, x = small_vgg
    out = model.apply(variables, x)
    assert out.shape == (2, 5)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    apply = jax.jit(model.apply, static_argnames="train")
    np.testing.assert_allclose(apply(variables, x), out, rtol=1e-5, atol=1e-6)

    out_t, new_vars = model.apply(variables, x, train=True)
    out_tj, new_vars_j = apply(variables, x, train=True)
    assert out_t.shape == (2, 5)
    assert not np.allclose(out_t, out)
    np.testing.assert_allclose(out_tj, out_t, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(new_vars) == jax.tree.structure(variables)
    assert_plain_tree(new_vars)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_vars_j, new_vars)
    jax.tree.map(np.testing.assert_array_equal, new_vars["params"], variables["params"])
    for i in range(NUM_CONVS):
        old, new = variables["batch_stats"][f"BatchNorm_{i}"], new_vars["batch_stats"][f"BatchNorm_{i}"]
        assert not np.allclose(old["mean"], new["mean"]), i
        assert not np.allclose(old["var"], new["var"]), i
