"""The unique-data power law L(N) = a·N^(−α) + L∞: recovery, round trip, flagged inversions, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from unlearnx.eval import scaling


@settings(max_examples=40, deadline=None)
@given(
    a=st.floats(0.5, 50.0, allow_subnormal=False),
    alpha=st.floats(0.05, 0.8, allow_subnormal=False),
    l_inf=st.floats(0.0, 3.0, allow_subnormal=False),
    count=st.integers(4, 8),
)
@example(a=1.0, alpha=0.75, l_inf=1.625, count=4)  # a bracket ~1e-7 L∞ wide: SciPy on L∞ itself stopped early
def test_recovers_known_parameters_from_exact_points(a, alpha, l_inf, count):
    sizes = np.logspace(4, 8, count)
    losses = a * sizes**-alpha + l_inf
    fit = scaling.fit_power_law(sizes, losses)
    assert fit.alpha == pytest.approx(alpha, rel=1e-3, abs=1e-4)
    assert fit.a == pytest.approx(a, rel=1e-2)
    assert fit.l_inf == pytest.approx(l_inf, rel=1e-3, abs=1e-4 * losses.min())
    np.testing.assert_allclose(fit(sizes), losses, rtol=1e-6)
    # N_eff(L(N)) = N for every fitted size, and a size between them
    for n in (*sizes, math.sqrt(sizes[0] * sizes[1])):
        n_eff = scaling.effective_params(fit, float(fit(n)))
        assert n_eff.status == "ok" and n_eff.value == pytest.approx(n, rel=1e-6)


def test_noisy_points_stay_close():
    rng = np.random.default_rng(0)
    sizes = np.logspace(5, 8, 12)
    losses = 8.0 * sizes**-0.25 + 1.7
    fit = scaling.fit_power_law(sizes, losses * (1 + 1e-4 * rng.normal(size=12)))
    assert fit.alpha == pytest.approx(0.25, rel=0.1) and fit.l_inf == pytest.approx(1.7, abs=0.05)


def test_inversion_flags_undefined_and_extrapolated_cases():
    fit = scaling.PowerLawFit(a=10.0, alpha=0.5, l_inf=1.0, n_min=100.0, n_max=10_000.0, rss=0.0)
    assert scaling.effective_params(fit, 1.0) == (math.inf, "undefined")
    assert scaling.effective_params(fit, 0.5) == (math.inf, "undefined")
    below = scaling.effective_params(fit, 1.0 + 10.0 / math.sqrt(25.0))  # N = 25 < 100
    assert below.status == "below_range" and below.value == pytest.approx(25.0)
    above = scaling.effective_params(fit, 1.0 + 10.0 / math.sqrt(40_000.0))
    assert above.status == "above_range" and above.value == pytest.approx(40_000.0)
    inside = scaling.effective_params(fit, 1.0 + 10.0 / math.sqrt(400.0))
    assert inside == pytest.approx((400.0, "ok")) or (
        inside.status == "ok" and inside.value == pytest.approx(400)
    )
    with pytest.raises(ValueError, match="finite"):
        scaling.effective_params(fit, float("nan"))


@pytest.mark.parametrize(
    ("sizes", "losses", "match"),
    [
        ([1e3, 1e4], [3.0, 2.0], "at least 3 distinct sizes"),
        ([1e3, 1e3, 1e4], [3.0, 2.9, 2.0], "at least 3 distinct sizes"),
        ([1e3, 1e4, 1e5], [3.0, 2.0], "one length"),
        ([1e3, -1e4, 1e5], [3.0, 2.0, 1.5], "sizes must be positive"),
        ([1e3, 1e4, 1e5], [3.0, float("nan"), 1.5], "losses must be positive and finite"),
        ([1e3, 1e4, 1e5], [2.0, 2.5, 3.0], "do not decrease"),
    ],
)
def test_bad_input(sizes, losses, match):
    with pytest.raises(ValueError, match=match):
        scaling.fit_power_law(sizes, losses)
