"""Sparsity distributions and schedules against independent references and hand-computed values."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnx import sparse

SHAPES = {"conv1": (3, 3, 3, 16), "conv2": (3, 3, 16, 32), "fc1": (512, 64), "head": (64, 10), "bias": (64,)}


def _params():
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def _erk_by_bisection(shapes, sparsity):
    """ε such that Σ_l min(ε·raw_l, 1)·N_l = (1 − s)·N, found by bisection (not the iterative re-solve)."""
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / sizes[k] for k, s in shapes.items()}
    target = (1 - sparsity) * sum(sizes.values())
    lo, hi = 0.0, 1e9
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(min(mid * raw[k], 1.0) * sizes[k] for k in shapes) < target:
            lo = mid
        else:
            hi = mid
    return {k: 1 - min(lo * raw[k], 1.0) for k in shapes}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.95, 0.98])
def test_erk_matches_bisection_and_hits_the_budget(sparsity):
    got = sparse.erk_sparsities(_params(), sparsity)
    assert got["bias"] is None  # rank-1 tensors stay dense by default
    kernels = {k: s for k, s in SHAPES.items() if len(s) >= 2}
    want = _erk_by_bisection(kernels, sparsity)
    for name in kernels:
        assert got[name] == pytest.approx(want[name], abs=1e-9)
    total = sum(math.prod(s) for s in kernels.values())
    kept = sum((1 - got[k]) * math.prod(s) for k, s in kernels.items())
    assert kept == pytest.approx((1 - sparsity) * total, rel=1e-12)


def test_erk_makes_small_tensors_dense_and_resolves():
    got = sparse.erk_sparsities(_params(), 0.5)
    assert got["conv1"] == 0.0  # would exceed density 1, so made dense
    assert sparse.erk_sparsities(_params(), 0.9, power_scale=0.0)["fc1"] == pytest.approx(0.9)  # uniform


def test_uniform_and_where():
    got = sparse.uniform_sparsities(_params(), 0.7, where="fc*")
    assert got == {"conv1": None, "conv2": None, "fc1": 0.7, "head": None, "bias": None}
    with pytest.raises(ValueError, match="selects no parameter"):
        sparse.uniform_sparsities(_params(), 0.7, where="nothing*")
    with pytest.raises(ValueError, match=r"sparsity must be a finite number in \[0, 1\), got 1.0"):
        sparse.erk_sparsities(_params(), 1.0)


def test_cubic_schedule_by_hand():
    kwargs = dict(initial=0.5, final=0.9, begin_step=20, end_step=100, frequency=10)  # k0 = 2, kf = 10, K = 8
    values = {
        step: float(sparse.cubic_sparsity(step, **kwargs)) for step in (0, 19, 20, 29, 30, 95, 99, 100, 500)
    }
    assert values[0] == values[19] == pytest.approx(0.5)  # before k0
    assert values[20] == values[29] == pytest.approx(0.5)  # k = k0
    assert values[30] == pytest.approx(0.9 - 0.4 * (1 - 1 / 8) ** 3)
    assert values[95] == values[99] == pytest.approx(0.9 - 0.4 / 8**3)  # kf − 1: s_f + (s_i − s_f)/K³
    assert values[100] == values[500] == pytest.approx(0.9)


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 0.6), st.floats(0.6, 0.99), st.integers(0, 50), st.integers(1, 200), st.integers(1, 20))
def test_cubic_schedule_is_monotone(initial, final, begin, length, frequency):
    end = begin + max(length, frequency * 2)
    steps = np.arange(0, end + 3 * frequency)
    values = np.asarray(
        sparse.cubic_sparsity(
            steps, initial=initial, final=final, begin_step=begin, end_step=end, frequency=frequency
        )
    )
    assert np.all(np.diff(values) >= -1e-6)
    assert values[0] == pytest.approx(initial, abs=1e-6) and values[-1] == pytest.approx(final, abs=1e-6)


def test_cosine_drop_fraction_by_hand():
    f = lambda step: float(sparse.cosine_drop_fraction(step, total_steps=1000))  # noqa: E731
    assert f(0) == pytest.approx(0.5)
    assert f(500) == pytest.approx(0.005 + 0.5 * 0.495)
    assert f(1000) == pytest.approx(0.005) and f(5000) == pytest.approx(0.005)
    assert f(250) == pytest.approx(0.005 + 0.5 * 0.495 * (1 + math.cos(math.pi / 4)), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(initial=0.0, final=1.0, begin_step=0, end_step=10, frequency=1), "final must be"),
        (dict(initial=-0.1, final=0.5, begin_step=0, end_step=10, frequency=1), "initial must be"),
        (dict(initial=0.0, final=0.5, begin_step=10, end_step=10, frequency=1), "end_step"),
        (dict(initial=0.0, final=0.5, begin_step=0, end_step=10, frequency=0), "frequency"),
        (dict(initial=0.0, final=0.5, begin_step=0, end_step=5, frequency=10), "no pruning event"),
    ],
)
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparse.cubic_sparsity(0, **kwargs)
