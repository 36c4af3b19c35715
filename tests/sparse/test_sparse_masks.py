"""Exact top-k masks, global/layer magnitude pruning and drop-and-grow against NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unlearnx import sparse


def _numpy_keep_top(scores, count):
    order = np.argsort(-np.asarray(scores, np.float64).ravel(), kind="stable")
    keep = np.zeros(order.size, bool)
    keep[order[:count]] = True
    return keep.reshape(np.shape(scores))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 60), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0])),
    st.integers(0, 70),
)
def test_keep_top_exact_counts_with_ties(scores, count):
    kept = np.asarray(sparse.keep_top(jnp.asarray(scores), count))
    assert kept.sum() == min(count, scores.size)
    np.testing.assert_array_equal(kept, _numpy_keep_top(scores, count))  # ties: lower index first


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_global_masks_keep_the_largest_raw_magnitudes(sparsity):
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(30, 20)) * 3, "b": rng.normal(size=(20, 10)), "bias": rng.normal(size=10)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    got = sparse.magnitude_masks(params, sparsity)
    assert np.all(np.asarray(got["bias"]))  # not selected: dense
    pooled = np.concatenate([np.abs(params["a"]).ravel(), np.abs(params["b"]).ravel()])
    want = _numpy_keep_top(pooled, round((1 - sparsity) * pooled.size))
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(got["a"]).ravel(), np.asarray(got["b"]).ravel()]), want
    )
    # Raw global ranking gives the large-scale tensor a higher density than per-layer pruning does.
    layer = sparse.magnitude_masks(params, sparsity, scope="layer")
    assert np.asarray(got["a"]).mean() > np.asarray(layer["a"]).mean()
    assert np.asarray(layer["a"]).sum() == round((1 - sparsity) * 600)


def test_layer_scope_takes_a_sparsity_tree():
    params = {"a": np.arange(12.0).reshape(3, 4), "b": np.arange(6.0).reshape(2, 3)}
    got = sparse.magnitude_masks(params, {"a": 0.5, "b": None}, scope="layer")
    np.testing.assert_array_equal(np.asarray(got["a"]).ravel(), np.arange(12) >= 6)
    assert np.all(np.asarray(got["b"]))
    with pytest.raises(ValueError, match="scope"):
        sparse.magnitude_masks(params, 0.5, scope="row")
    with pytest.raises(TypeError, match="one float"):
        sparse.magnitude_masks(params, {"a": 0.5, "b": 0.5})


def test_drop_and_grow_by_hand():
    weights = jnp.asarray([5.0, 4.0, -3.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    mask = jnp.asarray([1, 1, 1, 1, 1, 0, 0, 0], bool)
    scores = jnp.asarray([0.0, 0.0, 0.0, 0.5, 0.1, 0.9, 0.2, 0.3])
    # n = 5 active, r = ceil(0.4 · 5) = 2: drop |w| = 2 and 1, keep {5, 4, −3}; grow the two best scores among
    # the rest (indices 5 and 3, the latter just dropped).
    got = sparse.drop_and_grow(weights, mask, scores, 0.4)
    np.testing.assert_array_equal(np.asarray(got), [1, 1, 1, 1, 0, 1, 0, 0])


def test_drop_and_grow_ranks_inactive_weights_lowest():
    weights = jnp.asarray([0.0, 0.1, 7.0, 0.2])  # entry 2 is inactive although large
    mask = jnp.asarray([1, 1, 0, 1], bool)
    got = sparse.drop_and_grow(weights, mask, jnp.asarray([1.0, 0.0, 0.0, 0.0]), 0.3)  # r = 1
    np.testing.assert_array_equal(np.asarray(got), [1, 1, 0, 1])  # drops the active zero, regrows it
