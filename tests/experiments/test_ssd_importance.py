"""The bound quantities of the SSD class sweep (experiments.ssd_importance): the largest I_f/I_D and the
fraction SSD selects, against hand-computed trees and a float64 NumPy empirical Fisher, and the bound
itself: with D ⊇ D_f the exact empirical Fisher keeps I_f/I_D ≤ |D|/|D_f|, with equality for a parameter
that only the forget examples move."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ssd_importance
from unlearnx import fisher


def test_max_ratio_and_selected_fraction_by_hand():
    forget = {"params": {"w": np.array([2.0, 0.0, 3.0]), "b": np.array([0.5])}}
    full = {"params": {"w": np.array([1.0, 0.0, 0.0]), "b": np.array([0.25])}}
    forget["batch_stats"], full["batch_stats"] = {"m": np.array([100.0])}, {"m": np.array([1.0])}
    # Ratios over I_D > 0 and trainable leaves: w[0] 2/1, b 0.5/0.25; batch stats (100) and I_D = 0 excluded.
    assert ssd_importance.max_ratio(forget, full) == pytest.approx(2.0)
    # α = 1: w[0] (2 > 1), w[2] (3 > 0) and b (0.5 > 0.25) of 4 trainable scalars; α = 2.5: only w[2].
    assert ssd_importance.selected_fraction(forget, full, 1.0) == pytest.approx(3 / 4)
    assert ssd_importance.selected_fraction(forget, full, 2.5) == pytest.approx(1 / 4)
    assert ssd_importance.max_ratio({"params": {"w": np.zeros(2)}}, {"params": {"w": np.zeros(2)}}) == 0.0


def _logistic_fisher(w, x, y):
    """Float64 reference: (1/N) Σᵢ (∂ℓᵢ/∂w)² of the softmax cross-entropy of x @ w."""
    logits = x @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    delta = p - np.eye(w.shape[1])[y]
    per_example = x[:, :, None] * delta[:, None, :]
    return np.mean(per_example**2, axis=0)


def test_empirical_fisher_obeys_the_bound():
    rng = np.random.default_rng(0)
    n, n_forget, classes = 60, 12, 3
    x = rng.normal(size=(n, 4))
    x[n_forget:, 3] = 0.0  # feature 3 is non-zero on the forget examples (the first 12) only
    y = rng.integers(0, classes, size=n)
    w = rng.normal(size=(4, classes)) * 0.3

    def loss_fn(params, batch):
        logits = batch["x"] @ params["w"]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1)[:, 0]

    def importance(rows):
        batches = [{"x": jnp.asarray(x[rows], jnp.float32), "y": jnp.asarray(y[rows])}]
        return fisher.diagonal(loss_fn, {"w": jnp.asarray(w, jnp.float32)}, batches, estimator="empirical")

    i_f, i_d = importance(np.arange(n_forget)), importance(np.arange(n))
    np.testing.assert_allclose(i_f["w"], _logistic_fisher(w, x[:n_forget], y[:n_forget]), rtol=1e-4)
    np.testing.assert_allclose(i_d["w"], _logistic_fisher(w, x, y), rtol=1e-4)
    bound = n / n_forget
    ratio = ssd_importance.max_ratio(i_f, i_d)
    assert ratio == pytest.approx(bound, rel=1e-4)  # reached by the forget-only feature's weights
    others = ssd_importance.max_ratio({"w": i_f["w"][:3]}, {"w": i_d["w"][:3]})
    assert others < bound
    # A fixed α at the bound selects nothing; just below it selects the forget-only row (3 of 12).
    assert ssd_importance.selected_fraction(i_f, i_d, bound * (1 + 1e-3)) == 0.0
    assert ssd_importance.selected_fraction(i_f, i_d, bound * (1 - 1e-3)) == pytest.approx(3 / 12)
