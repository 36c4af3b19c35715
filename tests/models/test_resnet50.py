"""Tests for `unlearnx.models._resnet50` (full size only abstractly; forward passes at width 4, 16x16)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_testutil import assert_plain_tree

from unlearnx import models

# Per stage: (base width multiplier, stride, number of Bottleneck blocks).
STAGES = [(1, 1, 3), (2, 2, 4), (4, 2, 6), (8, 2, 3)]
BLOCKS = [f"layer{s}_{b}" for s, (_, _, n) in enumerate(STAGES, start=1) for b in range(n)]
PROJECTED = {"layer1_0", "layer2_0", "layer3_0", "layer4_0"}


def _expected_resnet50_params(width: int, in_channels: int, num_classes: int) -> int:
    """Parameter count of a CIFAR ResNet-50 derived from the architecture by hand."""

    def conv(k, cin, cout):  # no bias
        return k * k * cin * cout

    def bn(c):  # scale + bias
        return 2 * c

    total = conv(3, in_channels, width) + bn(width)  # stem
    cin = width
    for mult, _, num_blocks in STAGES:
        base = width * mult
        cout = 4 * base
        for b in range(num_blocks):
            total += conv(1, cin, base) + bn(base)
            total += conv(3, base, base) + bn(base)
            total += conv(1, base, cout) + bn(cout)
            if b == 0:  # stride 2, or (stage 1) channels w -> 4w: 1x1 projection
                total += conv(1, cin, cout) + bn(cout)
            cin = cout
    return total + (cin + 1) * num_classes  # dense head on the pooled 32w features


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 23_520_842), (100, 23_705_252)])
def test_param_count_full_size(num_classes, expected):
    assert _expected_resnet50_params(64, 3, num_classes) == expected
    model = models.resnet50((32, 32, 3), num_classes)
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    assert models.num_params(abstract) == expected
    assert model.num_params(abstract) == expected
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(model.apply, abstract, x).shape == (2, num_classes)


def test_get_builds_resnet50_for_other_inputs():
    model = models.get("resnet50", [28, 28, 1], 7, width=8)
    assert isinstance(model, models.Model)
    assert model.name == "resnet50"
    assert model.has_batch_stats
    abstract = jax.eval_shape(model.init, jax.random.key(0))
    assert models.num_params(abstract) == _expected_resnet50_params(8, 1, 7)
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    assert jax.eval_shape(model.apply, abstract, x).shape == (3, 7)
    with pytest.raises(ValueError, match="height, width, channels"):
        models.get("resnet50", (32, 32), 10)


@pytest.fixture(scope="module")
def small_resnet50():
    model = models.resnet50((16, 16, 3), 5, width=4)
    init = jax.jit(model.init)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    return model, init, init(jax.random.key(0)), x


def test_param_paths(small_resnet50):
    model, _, variables, _ = small_resnet50
    assert model.name == "resnet50"
    assert model.has_batch_stats
    assert not model.stochastic
    assert_plain_tree(variables)
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == {"Conv_0", "BatchNorm_0", "Dense_0", *BLOCKS}
    assert set(stats) == {"BatchNorm_0", *BLOCKS}
    assert set(params["Conv_0"]) == {"kernel"}
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 4)
    plain = {f"{kind}_{i}" for kind in ("Conv", "BatchNorm") for i in range(3)}
    projected = plain | {"Conv_proj", "BatchNorm_proj"}
    for name in BLOCKS:
        assert set(params[name]) == (projected if name in PROJECTED else plain), name
        assert set(stats[name]) == {k for k in params[name] if k.startswith("BatchNorm")}
        assert set(stats[name]["BatchNorm_2"]) == {"mean", "var"}
        assert set(params[name]["Conv_1"]) == {"kernel"}
    # Bottleneck shapes: stage 1 base 4 -> out 16; stage 4 base 32 -> out 128.
    assert params["layer1_0"]["Conv_0"]["kernel"].shape == (1, 1, 4, 4)
    assert params["layer1_0"]["Conv_2"]["kernel"].shape == (1, 1, 4, 16)
    assert params["layer1_0"]["Conv_proj"]["kernel"].shape == (1, 1, 4, 16)
    assert params["layer1_1"]["Conv_0"]["kernel"].shape == (1, 1, 16, 4)
    assert params["layer3_0"]["Conv_1"]["kernel"].shape == (3, 3, 16, 16)
    assert params["layer3_0"]["Conv_proj"]["kernel"].shape == (1, 1, 32, 64)
    assert params["layer4_2"]["Conv_2"]["kernel"].shape == (1, 1, 32, 128)
    assert params["Dense_0"]["kernel"].shape == (128, 5)
    assert models.num_params(variables) == _expected_resnet50_params(4, 3, 5)


def test_init_deterministic_and_he_normal(small_resnet50):
    _, init, variables, _ = small_resnet50
    jax.tree.map(np.testing.assert_array_equal, init(jax.random.key(0)), variables)
    other = init(jax.random.key(1))
    assert not np.array_equal(other["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["kernel"])
    # He normal over fan_out: std = sqrt(2 / (3 * 3 * cout)); 9216 samples.
    kernel = np.asarray(variables["params"]["layer4_1"]["Conv_1"]["kernel"])
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 32)), rtol=0.05)


def test_forward_train_and_jit(small_resnet50):
    model, _, variables, x = small_resnet50
    # Eager vs jit in train mode covers the outputs and every updated BatchNorm statistic (eager vs
    # jit in eval mode is covered generically in test_bridge; compiling it here costs ~2 s).
    out_t, new_vars = model.apply(variables, x, train=True)
    out_tj, new_vars_j = jax.jit(model.apply, static_argnames="train")(variables, x, train=True)
    out = model.apply(variables, x)
    assert out.shape == (4, 5)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    assert out_t.shape == (4, 5)
    assert not np.allclose(out_t, out)
    np.testing.assert_allclose(out_tj, out_t, rtol=1e-4, atol=1e-4)  # 16 blocks deep
    assert jax.tree.structure(new_vars) == jax.tree.structure(variables)
    assert_plain_tree(new_vars)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_vars_j, new_vars)
    jax.tree.map(np.testing.assert_array_equal, new_vars["params"], variables["params"])
    for path in [("BatchNorm_0",), ("layer1_0", "BatchNorm_proj"), ("layer3_5", "BatchNorm_2")]:
        old, new = variables["batch_stats"], new_vars["batch_stats"]
        for key in path:
            old, new = old[key], new[key]
        assert not np.allclose(old["mean"], new["mean"]), path
        assert not np.allclose(old["var"], new["var"]), path
