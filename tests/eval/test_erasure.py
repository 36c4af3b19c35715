"""Erasure metrics on hand-built predictions and a hand-computed ΔKV, over the three tree flavours."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unlearnx.eval import erasure


def test_rates_on_hand_built_predictions():
    predicted = np.array([2, 2, 0, 1, 2, 3, 2, 2])  # 5 of 8 are concept 2
    assert erasure.erased_rate(predicted, 2) == 5 / 8
    assert erasure.attack_success_rate(predicted, 3) == 1 / 8
    assert erasure.erased_rate(predicted, 7) == 0.0
    assert erasure.preservation_accuracy([0, 1, 1, 3], [0, 1, 2, 2]) == 0.5


def test_rates_reject_bad_labels():
    with pytest.raises(ValueError, match="predicted"):
        erasure.erased_rate([], 1)
    with pytest.raises(ValueError, match="1-D"):
        erasure.erased_rate(np.zeros((2, 2), int), 1)
    with pytest.raises(TypeError, match="integer"):
        erasure.erased_rate(np.array([0.5, 1.0]), 1)
    with pytest.raises(ValueError, match="differ in size"):
        erasure.preservation_accuracy([0, 1], [0, 1, 2])


SELECT = re.compile(r"attn2/to_[kv]/kernel$")


def _flavours(k, v, other):
    linen = {"params": {"attn2": {"to_k": {"kernel": k}, "to_v": {"kernel": v}}, "conv": {"kernel": other}}}
    plain = {"attn2": {"to_k": {"kernel": k}, "to_v": {"kernel": v}}, "conv": {"kernel": other}}
    state = nnx.State(
        {
            "attn2": {"to_k": {"kernel": nnx.Param(k)}, "to_v": {"kernel": nnx.Param(v)}},
            "conv": {"kernel": nnx.Param(other)},
        }
    )
    return {"linen": linen, "plain": plain, "nnx": state}


@pytest.mark.parametrize("flavour", ["linen", "plain", "nnx"])
def test_kv_output_change_by_hand(flavour):
    """Keys c = (1, 0): K maps it to row 0 of K. K = [[3, 4], [0, 1]] → ‖cK‖² = 25; K′ = [[0, 4], …] →
    ‖c(K′ − K)‖² = 9. V (3-D, two heads) = [[[1], [0]], …] → ‖cV‖² = 1, unchanged. ΔKV = √(9 / 26).
    The unselected conv kernel changes without counting."""
    k = jnp.array([[3.0, 4.0], [0.0, 1.0]])
    v = jnp.array([[[1.0], [0.0]], [[5.0], [5.0]]])
    original = _flavours(k, v, jnp.ones((3, 3)))[flavour]
    edited = _flavours(k.at[0, 0].set(0.0), v, jnp.zeros((3, 3)))[flavour]
    keys = np.array([[[1.0, 0.0]]])
    expected = np.sqrt(9.0 / 26.0)
    assert erasure.kv_output_change(original, edited, keys, where=SELECT) == pytest.approx(expected, rel=1e-9)
    assert erasure.kv_output_change(original, original, keys, where=SELECT) == 0.0


def test_kv_output_change_matches_float64_on_random_kernels_and_uses_cross_attention_kv_by_default():
    rng = np.random.default_rng(0)
    k, v = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    k2, v2 = k + 0.1 * rng.normal(size=k.shape), v + 0.1 * rng.normal(size=v.shape)
    keys = rng.normal(size=(3, 5, 6))
    rows = keys.reshape(-1, 6)
    expected = np.sqrt(
        (np.sum((rows @ (k2 - k)) ** 2) + np.sum((rows @ (v2 - v)) ** 2))
        / (np.sum((rows @ k) ** 2) + np.sum((rows @ v) ** 2))
    )
    original = _flavours(jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), jnp.ones(2))["linen"]
    edited = _flavours(jnp.asarray(k2, jnp.float32), jnp.asarray(v2, jnp.float32), jnp.ones(2))["linen"]
    assert erasure.kv_output_change(original, edited, keys) == pytest.approx(expected, rel=1e-5)


def test_kv_output_change_errors():
    original = _flavours(jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.ones(1))["plain"]
    with pytest.raises(ValueError, match="matched no kernel"):
        erasure.kv_output_change(original, original, np.ones((1, 2)), where="nothing/*")
    with pytest.raises(ValueError, match="attn2/to_k/kernel.*d_in 2, keys 3"):
        erasure.kv_output_change(original, original, np.ones((1, 3)), where=SELECT)
    other = _flavours(jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.ones(1))["linen"]
    with pytest.raises(ValueError):
        erasure.kv_output_change(original, other, np.ones((1, 2)), where=SELECT)
