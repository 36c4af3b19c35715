"""Exact top-k masks, global/layer magnitude pruning and drop-and-grow against NumPy references."""

import math
import os
import subprocess
import sys
import textwrap

import jax
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


# ---------------------------------------------------------------------------------------------------------
# The linear-time selection against the sort it replaces, and exact drop counts.


def _random_scores(rng, size, kind):
    if kind == "normal":
        return rng.normal(size=size).astype(np.float32)
    if kind == "few values":  # many ties, ±0, ±inf and NaN
        return rng.choice(np.float32([0.0, -0.0, 1.0, 2.0, -1.0, np.inf, -np.inf, np.nan]), size=size)
    if kind == "sparse magnitudes":  # |w| with most entries exactly 0
        return (np.abs(rng.normal(size=size)) * (rng.random(size) < 0.2)).astype(np.float32)
    if kind == "extremes":
        return rng.choice(np.float32([1e-45, 1e-30, 0.5, 3e38]), size=size)
    return rng.integers(-4, 4, size=size).astype(np.int32)


@pytest.mark.parametrize("size", [1, 7, 1000, 4099])
def test_selection_is_bit_exact_with_the_stable_sort(size):
    from unlearnx.sparse import _select

    rng = np.random.default_rng(size)
    linear = jax.jit(_select.top_flat)  # the count is traced: one compilation per size and dtype
    by_sort = jax.jit(_select.sorted_top)
    for kind in ("normal", "few values", "sparse magnitudes", "extremes", "integers"):
        for _ in range(4):
            scores = jnp.asarray(_random_scores(rng, size, kind))
            for count in {0, 1, size // 3, size - 1, size, size + 3, int(rng.integers(0, size + 1))}:
                count = jnp.int32(count)
                got = np.asarray(linear(scores, count))
                np.testing.assert_array_equal(got, np.asarray(by_sort(scores, count)), err_msg=kind)
                assert got.sum() == min(int(count), size)


def _numpy_drop_and_grow(weights, mask, scores, fraction):
    """Sort-based reference: ⌈p·n⌉ in float64 as Python computes it, stable sorts, ties by index."""
    active = int(mask.sum())
    drop = math.ceil(fraction * active)
    kept = _numpy_keep_top(np.where(mask, np.abs(weights), -1.0), active - drop)
    grown = _numpy_keep_top(np.where(kept, -np.inf, scores), drop)
    return kept | grown


def test_drop_and_grow_and_global_pruning_with_many_ties_match_numpy():
    rng = np.random.default_rng(3)
    drop_and_grow = jax.jit(sparse.drop_and_grow)
    for trial in range(6):
        weights = rng.choice(np.float32([0.0, 0.5, -0.5, 1.0, 2.0]), size=(40, 25))
        mask = rng.random((40, 25)) < 0.4
        scores = rng.choice(np.float32([0.0, 0.0, 0.1, 0.3]), size=(40, 25))
        fraction = float(rng.choice([0.1, 0.3, 0.5, 1.0]))
        got = np.asarray(drop_and_grow(weights, mask, scores, jnp.float32(fraction)))
        want = _numpy_drop_and_grow(weights, mask, scores, float(np.float32(fraction)))
        np.testing.assert_array_equal(got, want)
        assert got.sum() == mask.sum()
        tensors = {"a": weights, "b": weights[:10] * 2}
        masks = {"a": mask, "b": ~mask[:10]}
        pooled = np.concatenate([np.where(masks[k], np.abs(tensors[k]), -1.0).ravel() for k in ("a", "b")])
        sparsity = (0.3, 0.7, 0.95)[trial % 3]
        pruned = sparse.prune_globally(tensors, masks, sparsity)
        want = _numpy_keep_top(pooled, round((1 - sparsity) * pooled.size))
        flat = np.concatenate([np.asarray(pruned[k]).ravel() for k in ("a", "b")])
        np.testing.assert_array_equal(flat, want)


@pytest.mark.parametrize(
    ("fraction", "active", "expected"),
    [
        # Python: 0.001 · 3,000,000 = 3000.0 in float64 (the exact product of the float64 0.001 is a hair
        # above 3000, so an exact-rational or a float32 ceiling gives 3001).
        (0.001, 3_000_000, 3000),
        (0.088, 4_194_307, 369_100),  # float32 gives 369,099
        (0.017, 5_000_000, 85_000),  # float32 gives 85,001
    ],
)
def test_drop_counts_are_pythons_float64_ceiling_for_large_layers(fraction, active, expected):
    from unlearnx.sparse import _select
    from unlearnx.sparse._masks import drop_count

    assert math.ceil(fraction * active) == expected
    assert int(np.ceil(np.float32(fraction) * np.float32(active))) != expected  # where float32 is off by one
    limbs, shift = _select.split_fraction(fraction)
    count = jax.jit(lambda n: drop_count((limbs, shift), n))(jnp.int32(active))
    assert int(count) == expected
    assert int(jax.jit(lambda n: drop_count(fraction, n))(jnp.int32(active))) == expected
    # A traced float32 fraction: Python's ceiling for the float32 value, also exactly.
    traced = jax.jit(drop_count)(jnp.float32(fraction), jnp.int32(active))
    assert int(traced) == math.ceil(float(np.float32(fraction)) * active)


def test_drop_counts_agree_with_python_on_random_and_near_integer_products():
    from unlearnx.sparse import _select

    rng = np.random.default_rng(5)
    cases = []
    for _ in range(300):
        n = int(rng.integers(1, 2**31 - 1))
        p = int(rng.integers(0, n)) / n  # p·n within rounding of an integer
        cases += [(p, n), (math.nextafter(p, 1.0), n), (math.nextafter(p, 0.0), n), (float(rng.random()), n)]
    cases += [(0.0, 7), (1.0, 2**31 - 1), (1e-300, 5), (0.5, 0), (0.3, 10), (0.1, 10)]
    limbs, shifts = _select.fraction_table([p for p, _ in cases])
    counts = jax.jit(jax.vmap(lambda limb, shift, n: _select.ceil_times(list(limb), shift, n)))(
        limbs, shifts, jnp.asarray([n for _, n in cases], jnp.int32)
    )
    np.testing.assert_array_equal(np.asarray(counts), [math.ceil(p * n) for p, n in cases])


def test_drop_and_grow_on_a_large_layer_drops_pythons_count():
    # n = 4,194,307 active weights (ascending, so the r smallest are the first r) and 400,000 inactive ones
    # that the grow scores prefer: the result's first active index is the drop count r. At p = 0.088
    # Python drops 369,100; a float32 count would drop 369,099.
    active, inactive = 4_194_307, 400_000
    index = jnp.arange(active + inactive)
    weights = jnp.where(index < active, index + 1.0, 0.0)
    result = np.asarray(sparse.drop_and_grow(weights, index < active, (index >= active) * 1.0, 0.088))
    assert result.sum() == active
    assert int(np.argmax(result)) == 369_100


def test_drop_counts_with_x64_read_the_float64_fraction_exactly():
    # With jax_enable_x64 the traced fraction is float64 (its bits are read exactly) and the schedule is
    # evaluated in float64; a subprocess, because x64 must be set before JAX starts.
    script = textwrap.dedent(
        """
        import math, jax, jax.numpy as jnp
        from unlearnx import sparse
        from unlearnx.sparse._masks import drop_count
        assert jnp.asarray(0.5).dtype == jnp.float64
        for p, n in [(0.001, 3_000_000), (0.088, 4_194_307), (0.3, 10), (0.1, 10), (1.0, 2**31 - 1)]:
            got = int(jax.jit(drop_count)(jnp.float64(p), jnp.int32(n)))
            assert got == math.ceil(p * n), (p, n, got)
        t = jnp.asarray(300, jnp.int32)
        rate = sparse.cosine_drop_fraction(t, initial=0.5, minimum=0.005, total_steps=1000)
        assert rate.dtype == jnp.float64
        exact = 0.005 + 0.5 * (0.5 - 0.005) * (1 + math.cos(math.pi * 300 / 1000))
        assert math.isclose(float(rate), exact, rel_tol=1e-15)
        """
    )
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)


def test_counts_above_two_to_the_24_are_exact():
    # Counts are float32 sums in chunks of 2^24 (exact); a plain float32 sum of 2^24 + 3 ones gives 2^24.
    from unlearnx.sparse import _select

    size = 2**24 + 3
    flags = jnp.ones(size, bool).at[5].set(False)
    assert int(jax.jit(_select.count)(flags)) == size - 1
    keys = _select.order_keys(jnp.arange(size, dtype=jnp.float32) % 7)  # heavy ties
    kept = np.asarray(_select.top_from_keys(keys, jnp.int32(2_000_000)))
    sixes = np.flatnonzero(np.arange(size) % 7 == 6)
    assert kept.sum() == 2_000_000
    np.testing.assert_array_equal(np.flatnonzero(kept), sixes[:2_000_000])  # the largest, lowest index first
