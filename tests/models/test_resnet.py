"""Tests for `unlearnx.models._resnet` (kept small: width 8, 8x8 inputs, batch 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from models_testutil import assert_plain_tree

from unlearnx import models

BLOCKS = [f"layer{s}_{b}" for s in range(1, 5) for b in range(2)]


@pytest.fixture(scope="module")
def small_resnet():
    model = models.resnet18((8, 8, 3), 5, width=8)
    init = jax.jit(model.init)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    return model, init, init(jax.random.key(0)), x


def _expected_resnet18_params(width: int, in_channels: int, num_classes: int) -> int:
    """Parameter count of a CIFAR ResNet-18 derived from the architecture by hand."""

    def conv(k, cin, cout):  # no bias
        return k * k * cin * cout

    def bn(c):  # scale + bias
        return 2 * c

    total = conv(3, in_channels, width) + bn(width)  # stem
    cin = width
    for mult, stride in [(1, 1), (2, 2), (4, 2), (8, 2)]:
        cout = width * mult
        for b in range(2):
            s = stride if b == 0 else 1
            total += conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
            if s != 1 or cin != cout:
                total += conv(1, cin, cout) + bn(cout)
            cin = cout
    return total + cin * num_classes + num_classes  # dense head


def test_param_count_full_size():
    model = models.resnet18((32, 32, 3), 100)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    expected = _expected_resnet18_params(64, 3, 100)
    assert expected == 11_220_132
    assert models.num_params(abstract) == expected
    assert model.num_params(abstract) == expected
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(model.apply, abstract, x).shape == (2, 100)


def test_param_paths(small_resnet):
    model, _, variables, _ = small_resnet
    assert model.name == "resnet18"
    assert model.has_batch_stats
    assert_plain_tree(variables)
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == {"Conv_0", "BatchNorm_0", "Dense_0", *BLOCKS}
    assert set(stats) == {"BatchNorm_0", *BLOCKS}
    assert set(params["Conv_0"]) == {"kernel"}
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 8)
    plain = {"Conv_0", "BatchNorm_0", "Conv_1", "BatchNorm_1"}
    projected = plain | {"Conv_proj", "BatchNorm_proj"}
    for name in BLOCKS:
        has_proj = name in ("layer2_0", "layer3_0", "layer4_0")
        assert set(params[name]) == (projected if has_proj else plain), name
        assert set(stats[name]) == {k for k in params[name] if k.startswith("BatchNorm")}
        assert set(stats[name]["BatchNorm_0"]) == {"mean", "var"}
    assert params["layer4_1"]["Conv_1"]["kernel"].shape == (3, 3, 64, 64)
    assert params["layer3_0"]["Conv_proj"]["kernel"].shape == (1, 1, 16, 32)
    assert params["Dense_0"]["kernel"].shape == (64, 5)
    assert models.num_params(variables) == _expected_resnet18_params(8, 3, 5)


def test_init_deterministic(small_resnet):
    _, init, variables, _ = small_resnet
    again = init(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, again, variables)
    other = init(jax.random.key(1))
    assert not np.array_equal(other["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["kernel"])


@pytest.fixture(scope="module")
def train_step(small_resnet):
    """One jitted train-mode forward + backward pass, shared by the tests below."""
    model, _, variables, x = small_resnet
    labels = jnp.array([0, 4])

    def loss(params, batch_stats):
        logits, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce, (logits, new_vars)

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, (logits, new_vars)), grads = step(variables["params"], variables["batch_stats"])
    return logits, new_vars, grads


def test_forward_and_train_mode(small_resnet, train_step):
    model, _, variables, x = small_resnet
    out = jax.jit(model.apply)(variables, x)  # eager vs jit is covered in test_bridge
    assert out.shape == (2, 5)
    assert np.all(np.isfinite(out))
    out_t, new_vars, _ = train_step
    assert out_t.shape == (2, 5)
    assert not np.allclose(out_t, out)
    assert jax.tree.structure(new_vars) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, new_vars["params"], variables["params"])
    for path in [("BatchNorm_0",), ("layer2_0", "BatchNorm_proj"), ("layer4_1", "BatchNorm_1")]:
        old, new = variables["batch_stats"], new_vars["batch_stats"]
        for key in path:
            old, new = old[key], new[key]
        assert not np.allclose(old["mean"], new["mean"]), path
        assert not np.allclose(old["var"], new["var"]), path


def test_grad_finite(small_resnet, train_step):
    _, _, variables, _ = small_resnet
    grads = train_step[2]
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.any(grads["Conv_0"]["kernel"] != 0)
    assert np.any(grads["layer3_0"]["Conv_proj"]["kernel"] != 0)
