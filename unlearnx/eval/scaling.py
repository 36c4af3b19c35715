"""Unique-data scaling law L(N) = a·N^(−α) + L∞ and the effective model size it implies.

Hernandez et al. (2022) fit the test loss of models trained on unique data against their non-embedding
parameter count N, then read a degraded model's loss L_obs back through the fit:

    N_eff = (a / (L_obs − L∞))^(1/α),

reporting N_eff / N (0.5 in the headline case: an 800M model trained with repeats performs like a 400M one).

The fit profiles over L∞: for a fixed L∞ < min L the model is linear in log space,
log(L − L∞) = log a − α log N, solved by least squares; L∞ is chosen to minimise the residual sum of
squares in loss space, first on a grid L∞ = min L·(1 − u), u log-spaced in [1e−9, 1] (L∞ = 0 included),
then by SciPy's bounded scalar minimiser (``scipy.optimize.minimize_scalar``, Brent's method) between the
best grid point's neighbours. Only fits with α > 0 count. Host-side NumPy/SciPy float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import optimize

__all__ = ["EffectiveParams", "PowerLawFit", "effective_params", "fit_power_law"]


class PowerLawFit(NamedTuple):
    """L(N) = a·N^(−α) + L∞ fitted on sizes in [n_min, n_max]; calling it evaluates L at given sizes.

    Attributes:
        a: the scale a > 0.
        alpha: the exponent α > 0.
        l_inf: the irreducible loss L∞, 0 ≤ L∞ < min L of the fitted losses.
        n_min: the smallest fitted size.
        n_max: the largest fitted size.
        rss: the loss-space residual sum of squares Σ (a·Nᵢ^(−α) + L∞ − Lᵢ)².

    Examples:
        >>> fit = PowerLawFit(a=2.0, alpha=0.5, l_inf=1.0, n_min=100.0, n_max=6400.0, rss=0.0)
        >>> fit([100, 400]).tolist()  # 2 / √100 + 1, 2 / √400 + 1
        [1.2, 1.1]
    """

    a: float
    alpha: float
    l_inf: float
    n_min: float
    n_max: float
    rss: float

    def __call__(self, sizes: npt.ArrayLike) -> np.ndarray:
        """The fitted loss at ``sizes``."""
        return self.a * np.asarray(sizes, np.float64) ** (-self.alpha) + self.l_inf


class EffectiveParams(NamedTuple):
    """N_eff and how far to trust it (the result of :func:`effective_params`).

    Attributes:
        value: N_eff = (a / (L − L∞))^(1/α), or ``inf`` when ``status`` is ``"undefined"``.
        status: ``"ok"`` (inside the fitted size range), ``"below_range"`` / ``"above_range"``
            (extrapolated below the smallest / above the largest fitted size: a number, but outside the
            data), or ``"undefined"`` (L ≤ L∞: no finite size reaches that loss; ``value`` is ``inf``).

    Examples:
        >>> fit = PowerLawFit(a=2.0, alpha=0.5, l_inf=1.0, n_min=100.0, n_max=6400.0, rss=0.0)
        >>> result = effective_params(fit, 1.1)  # (2 / (1.1 − 1))² = 400
        >>> round(result.value, 6), result.status
        (400.0, 'ok')
        >>> effective_params(fit, 0.9)  # below L∞ = 1
        EffectiveParams(value=inf, status='undefined')
    """

    value: float
    status: str


def _validated(sizes: npt.ArrayLike, losses: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(sizes, np.float64)
    loss = np.asarray(losses, np.float64)
    if n.ndim != 1 or loss.shape != n.shape:
        raise ValueError(f"sizes and losses must be 1-D of one length, got shapes {n.shape} and {loss.shape}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise ValueError(f"sizes must be positive and finite, got {n.tolist()}")
    if not (np.all(np.isfinite(loss)) and np.all(loss > 0)):
        raise ValueError(f"losses must be positive and finite, got {loss.tolist()}")
    if len(np.unique(n)) < 3:
        raise ValueError(
            f"fitting a·N^(−α) + L∞ needs at least 3 distinct sizes, got {np.unique(n).tolist()}"
        )
    return n, loss


def _profile(log_n: np.ndarray, loss: np.ndarray, l_inf: float) -> tuple[float, float, float]:
    """(log a, α, rss) of the log-space least-squares fit at a fixed L∞ (rss = inf when α ≤ 0)."""
    y = np.log(loss - l_inf)
    x = log_n - log_n.mean()
    slope = float(np.dot(x, y - y.mean()) / np.dot(x, x))
    log_a = float(y.mean() - slope * log_n.mean())
    alpha = -slope
    if alpha <= 0:
        return log_a, alpha, math.inf
    residual = np.exp(log_a - alpha * log_n) + l_inf - loss
    return log_a, alpha, float(np.dot(residual, residual))


def fit_power_law(sizes: npt.ArrayLike, losses: npt.ArrayLike) -> PowerLawFit:
    """Fits L(N) = a·N^(−α) + L∞ with 0 ≤ L∞ < min L and α > 0 (see the module docstring).

    Args:
        sizes: Model sizes N (e.g. non-embedding parameters), at least 3 distinct.
        losses: The matching unique-data test losses.

    Returns:
        The :class:`PowerLawFit`.

    Raises:
        ValueError: On bad shapes or values, fewer than 3 distinct sizes, or losses that do not decrease
            with size (no fit with α > 0).

    Examples:
        Exact losses of L(N) = 2·N^(−1/2) + 1 give back a = 2, α = 1/2, L∞ = 1:

        >>> fit = fit_power_law([100, 400, 1600, 6400], [1.2, 1.1, 1.05, 1.025])
        >>> round(fit.a, 6), round(fit.alpha, 6), round(fit.l_inf, 6), fit.n_min, fit.n_max
        (2.0, 0.5, 1.0, 100.0, 6400.0)
    """
    n, loss = _validated(sizes, losses)
    log_n = np.log(n)
    floor = float(loss.min())
    fractions = np.logspace(-9, 0, 361)
    candidates = np.unique(np.clip(floor * (1.0 - fractions), 0.0, None))
    rss = np.array([_profile(log_n, loss, c)[2] for c in candidates])
    if not np.isfinite(rss).any():
        raise ValueError(f"losses do not decrease with size; no fit with α > 0 (sizes {n}, losses {loss})")
    best = int(np.argmin(rss))
    lo = candidates[max(best - 1, 0)]
    hi = candidates[min(best + 1, len(candidates) - 1)]
    refined = l_inf = candidates[best]
    if hi > lo:  # searched over u ∈ [0, 1], L∞ = lo + u (hi − lo): SciPy's tolerance is ~√ε relative to x,
        # which on L∞ itself would stop after two steps (the bracket is ~1e-7 L∞ wide for exact data)
        search = optimize.minimize_scalar(
            lambda u: _profile(log_n, loss, lo + u * (hi - lo))[2], bounds=(0.0, 1.0), method="bounded",
            options={"xatol": 1e-14},
        )  # fmt: skip
        refined = lo + float(search.x) * (hi - lo)
    if _profile(log_n, loss, refined)[2] < rss[best]:
        l_inf = refined
    log_a, alpha, residual = _profile(log_n, loss, l_inf)
    return PowerLawFit(math.exp(log_a), alpha, float(l_inf), float(n.min()), float(n.max()), residual)


def effective_params(fit: PowerLawFit, loss: float) -> EffectiveParams:
    """The size N_eff = (a / (L − L∞))^(1/α) whose fitted unique-data loss equals ``loss``.

    Args:
        fit: A :func:`fit_power_law` result.
        loss: The observed test loss L_obs.

    Returns:
        :class:`EffectiveParams` with ``status`` ``"undefined"`` (L ≤ L∞, value ``inf``),
        ``"below_range"`` / ``"above_range"`` (extrapolated outside [n_min, n_max]) or ``"ok"``.

    Raises:
        ValueError: If ``loss`` is not finite.

    Examples:
        >>> fit = fit_power_law([100, 400, 1600, 6400], [1.2, 1.1, 1.05, 1.025])  # 2·N^(−1/2) + 1
        >>> result = effective_params(fit, 1.05)  # (2 / 0.05)² = 1600, a fitted size
        >>> round(result.value), result.status
        (1600, 'ok')
        >>> result = effective_params(fit, 1.01)  # (2 / 0.01)² = 40000 > 6400
        >>> round(result.value), result.status
        (40000, 'above_range')
    """
    value = float(loss)
    if not math.isfinite(value):
        raise ValueError(f"effective_params: loss must be finite, got {loss!r}")
    if value <= fit.l_inf:
        return EffectiveParams(math.inf, "undefined")
    n_eff = math.exp((math.log(fit.a) - math.log(value - fit.l_inf)) / fit.alpha)
    # relative tolerance so that the fitted sizes themselves round-trip as "ok"
    if n_eff < fit.n_min * (1 - 1e-9):
        return EffectiveParams(n_eff, "below_range")
    if n_eff > fit.n_max * (1 + 1e-9):
        return EffectiveParams(n_eff, "above_range")
    return EffectiveParams(n_eff, "ok")
