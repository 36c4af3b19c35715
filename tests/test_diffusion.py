"""DDPM/DDIM against closed forms: the forward marginals' ᾱ, exact DDIM recovery with an ε-oracle, the
guidance formula, and the loss's caption dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import diffusion


def test_linear_schedule_alpha_bar_is_the_float64_product():
    schedule = diffusion.linear_schedule(1000)
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(1000) / 999.0
    np.testing.assert_allclose(np.asarray(schedule.betas), betas, rtol=1e-6)
    expected = np.exp(np.cumsum(np.log1p(-betas)))  # Π (1 − β_s), by logs
    np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod), expected, rtol=1e-5)
    assert schedule.num_timesteps == 1000


def test_forward_marginal_mean_and_variance_match_the_closed_form():
    """x_t | x₀ ~ N(√ᾱ_t x₀, 1 − ᾱ_t): checked on 20 000 draws at three timesteps."""
    schedule = diffusion.linear_schedule(1000)
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    x0 = jnp.full((20_000, 1), 0.7)
    for t in (0, 250, 999):
        noise = jax.random.normal(jax.random.key(t), x0.shape)
        xt = np.asarray(diffusion.q_sample(schedule, x0, jnp.full((20_000,), t), noise))[:, 0]
        assert abs(xt.mean() - np.sqrt(alpha_bar[t]) * 0.7) < 4 * np.sqrt((1 - alpha_bar[t]) / 20_000) + 1e-6
        np.testing.assert_allclose(xt.var(), 1.0 - alpha_bar[t], rtol=0.05, atol=1e-6)


def test_guided_eps_is_the_cfg_combination():
    cond, uncond = np.array([1.0, -2.0, 0.5]), np.array([0.5, 1.0, 0.5])
    for scale in (0.0, 1.0, 7.5):
        expected = uncond + scale * (cond - uncond)
        np.testing.assert_allclose(np.asarray(diffusion.guided_eps(cond, uncond, scale)), expected, rtol=1e-6)


def test_ddim_timesteps_leading_spacing():
    np.testing.assert_array_equal(diffusion.ddim_timesteps(4, 1000), [750, 500, 250, 0])
    np.testing.assert_array_equal(diffusion.ddim_timesteps(1, 10), [0])
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.ddim_timesteps(0, 1000)


def _oracle(schedule, x0):
    """ε(x_t, t) = (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t): the exact noise of x_t for a known x₀."""

    def eps_fn(x, t, context):
        del context
        alpha = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
        return (x - jnp.sqrt(alpha) * jnp.tile(x0, (x.shape[0] // x0.shape[0], 1, 1, 1))) / jnp.sqrt(
            1 - alpha
        )

    return eps_fn


@pytest.mark.parametrize("steps", [1, 5, 25])
def test_ddim_eta0_with_an_eps_oracle_recovers_x0_exactly(steps):
    schedule = diffusion.linear_schedule(1000)
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 3)), jnp.float32)
    context = jnp.zeros((3, 2, 5))
    x_T = jax.random.normal(jax.random.key(1), x0.shape)
    run = jax.jit(
        lambda x: diffusion.ddim_sample(
            _oracle(schedule, x0),
            x,
            context,
            jnp.zeros((2, 5)),
            schedule,
            num_steps=steps,
            guidance_scale=3.0,
        )
    )
    np.testing.assert_allclose(np.asarray(run(x_T)), np.asarray(x0), atol=2e-4)


def test_ddim_one_step_by_hand():
    """One step from t = τ with a constant ε̂ and guidance: x₀ = (x − √(1−ᾱ) ε̂)/√ᾱ, computed in float64."""
    schedule = diffusion.linear_schedule(1000)
    alpha = float(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[0])
    x_T = np.array([[[[0.3, -0.2, 0.9]]]], np.float32)

    def eps_fn(x, t, context):  # conditional ε = 1, unconditional ε = 0.5 (context rows say which)
        return jnp.broadcast_to(context[:, 0, 0].reshape(-1, 1, 1, 1), x.shape)

    out = diffusion.ddim_sample(
        eps_fn,
        jnp.asarray(x_T),
        jnp.ones((1, 1, 1)),
        jnp.full((1, 1), 0.5),
        schedule,
        num_steps=1,
        guidance_scale=3.0,
    )
    eps = 0.5 + 3.0 * (1.0 - 0.5)
    np.testing.assert_allclose(np.asarray(out), (x_T - np.sqrt(1 - alpha) * eps) / np.sqrt(alpha), rtol=1e-5)


def test_eps_loss_uses_the_null_context_at_the_dropout_rate():
    """ε_θ returns the context's first entry; with c = 1 and ∅ = 0 and ε's true noise n, the loss is
    mean((k − n)²) where k is 1 for kept rows: with p_uncond → all ∅ the loss equals E n² = 1 ± noise."""
    schedule = diffusion.linear_schedule(1000)
    x0 = jnp.zeros((4000, 1, 1, 1))
    context, null = jnp.ones((4000, 1, 1)), jnp.zeros((1, 1))

    def eps_fn(x, t, c):
        return jnp.broadcast_to(c[:, 0, 0].reshape(-1, 1, 1, 1), x.shape)

    for p in (0.0, 0.5, 0.9):
        loss = float(diffusion.eps_loss(eps_fn, x0, context, null, jax.random.key(3), schedule, p_uncond=p))
        # E(k − n)² = P(keep)·(1 + 1) + P(drop)·1 = 2 − p.
        assert abs(loss - (2.0 - p)) < 0.1, (p, loss)
    with pytest.raises(ValueError, match="p_uncond"):
        diffusion.eps_loss(eps_fn, x0, context, null, jax.random.key(3), schedule, p_uncond=1.0)


def test_min_snr_weight_is_min_snr_gamma_over_snr():
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    snr = alpha_bar / (1.0 - alpha_bar)
    t = np.array([0, 10, 100, 300, 500, 999])
    weight = diffusion.min_snr_weight(diffusion.linear_schedule(1000), jnp.asarray(t), 5.0)
    # 1 − ᾱ₀ ≈ 1e-4 is formed in float32, so a relative error near 1e-4 at t = 0 is cancellation, not error.
    np.testing.assert_allclose(np.asarray(weight), np.minimum(snr[t], 5.0) / snr[t], rtol=1e-3)
    assert float(weight[-1]) == 1.0 and float(weight[0]) < 1e-3


def test_eps_loss_min_snr_weighting_averages_the_weight_over_uniform_t():
    """With x₀ = 0, ε_θ(x_t) = x_t / √(1 − ᾱ_t) + 1 misses the noise by exactly 1 everywhere, so the weighted
    loss is the batch mean of w_t; at uniform t it estimates (1/T) Σ_t min(SNR_t, γ)/SNR_t (float64)."""
    schedule = diffusion.linear_schedule(1000)
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    expected = np.mean(np.minimum(alpha_bar / (1 - alpha_bar), 3.0) / (alpha_bar / (1 - alpha_bar)))
    x0 = jnp.zeros((20_000, 2, 2, 1))
    context = null = jnp.zeros((1, 1))

    def eps_fn(x, t, c):
        return x / jnp.sqrt(1.0 - schedule.alphas_cumprod[t]).reshape(-1, 1, 1, 1) + 1.0

    args = (eps_fn, x0, jnp.broadcast_to(context, (20_000, 1, 1)), null, jax.random.key(4), schedule)
    assert abs(float(diffusion.eps_loss(*args)) - 1.0) < 1e-3
    loss = float(jax.jit(lambda: diffusion.eps_loss(*args, snr_gamma=3.0))())
    assert abs(loss - expected) < 0.015, (loss, expected)  # standard error ≈ 0.003
    with pytest.raises(ValueError, match="snr_gamma must be a finite number > 0"):
        diffusion.eps_loss(*args, snr_gamma=0.0)


def test_bad_arguments_raise():
    schedule = diffusion.linear_schedule(10)
    with pytest.raises(ValueError, match="beta"):
        diffusion.linear_schedule(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="eta > 0 needs rng"):
        diffusion.ddim_sample(
            lambda x, t, c: x, jnp.zeros((1, 2)), jnp.zeros((1, 1, 1)), None, schedule, eta=1.0
        )
    with pytest.raises(ValueError, match="clip_x0"):
        diffusion.ddim_sample(
            lambda x, t, c: x, jnp.zeros((1, 2)), jnp.zeros((1, 1, 1)), None, schedule, clip_x0=0
        )
