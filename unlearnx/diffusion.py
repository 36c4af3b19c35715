"""Denoising diffusion: the DDPM ε-prediction objective with caption dropout, and DDIM sampling with
classifier-free guidance. Pure functions of arrays and an ``eps_fn``; everything runs under ``jax.jit``.

Forward process (Ho et al. 2020) with a linear schedule β₁..β_T and ᾱ_t = Π_{s≤t} (1 − β_s):

    q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I),    x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε

Objective: E_{t, ε} w_t ‖ε − ε_θ(x_t, t, c)‖², with the caption c replaced by the empty caption ∅ with
probability p_uncond (10%) so one network also gives the unconditional ε_θ(x_t, t, ∅). w_t = 1 is DDPM's
simple loss; Min-SNR-γ weighting (Hang et al. 2023) uses w_t = min(SNR_t, γ) / SNR_t with
SNR_t = ᾱ_t / (1 − ᾱ_t), which stops the many nearly noise-free steps from dominating the gradient and
speeds up convergence (γ = 5 in the paper).

Classifier-free guidance with scale w:  ε̂ = ε_θ(x_t, t, ∅) + w·(ε_θ(x_t, t, c) − ε_θ(x_t, t, ∅)).

DDIM (Song et al. 2021) over a decreasing subsequence τ_S > … > τ_1 of timesteps, with ᾱ_prev = 1 after
the last step:

    x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    σ_t = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
    x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ_t²) ε̂ + σ_t z

η = 0 is deterministic: a perfect ε-oracle then returns x₀ exactly.

Timesteps are 0-based: index t ∈ {0, …, T − 1} uses ᾱ[t] = Π_{s≤t}(1 − β_s); concrete timesteps outside
that range raise (an index past the end would silently be clamped). Hyper-parameters (schedule sizes and
betas, p_uncond, γ, guidance scale, η, clip) are static Python numbers: a traced one raises ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks

__all__ = [
    "Schedule",
    "ddim_sample",
    "ddim_timesteps",
    "eps_loss",
    "guided_eps",
    "linear_schedule",
    "min_snr_weight",
    "q_sample",
]

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""``eps_fn(x_t [B, …], t int32 [B], context [B, L, d]) -> ε̂ [B, …]``."""


class Schedule(NamedTuple):
    """A noise schedule: β_t and ᾱ_t = Π_{s≤t} (1 − β_s) for t = 0..T − 1.

    Attributes:
        betas: β, float32 ``[T]``.
        alphas_cumprod: ᾱ, float32 ``[T]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> schedule = Schedule(jnp.array([0.5, 0.5]), jnp.array([0.5, 0.25]))
        >>> schedule.num_timesteps
        2
    """

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        """T, the number of timesteps."""
        return int(self.betas.shape[0])


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM's linear β schedule, β_t from ``beta_start`` to ``beta_end``; ᾱ accumulated in float64.

    β_t = β_start + (β_end − β_start)·t/(T − 1) and ᾱ_t = Π_{s≤t} (1 − β_s) for t = 0..T − 1.

    Args:
        num_timesteps: T.
        beta_start: β_0, in (0, 1).
        beta_end: β_{T−1}, in [``beta_start``, 1).

    Returns:
        The :class:`Schedule`.

    Raises:
        ValueError: ``num_timesteps < 1`` or betas outside (0, 1) or decreasing.

    Examples:
        >>> schedule = linear_schedule(3, beta_start=0.1, beta_end=0.3)
        >>> schedule.betas.tolist(), [round(a, 4) for a in schedule.alphas_cumprod.tolist()]
        ([0.1, 0.2, 0.3], [0.9, 0.72, 0.504])

    References:
        Ho, Jain & Abbeel, `Denoising Diffusion Probabilistic Models <https://arxiv.org/abs/2006.11239>`_,
        NeurIPS 2020.
    """
    checks.static_int("num_timesteps", num_timesteps, low=1, high=checks.INT32_MAX)
    checks.static_number("beta_start", beta_start)
    checks.static_number("beta_end", beta_end)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Samples the forward process: x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε.

    Args:
        schedule: the noise schedule.
        x0: clean data ``[B, …]``.
        t: integer timesteps ``[B]`` in [0, T); checked when concrete.
        noise: ε, shaped like ``x0``; ``x0`` and ``noise`` are checked finite when concrete.

    Returns:
        x_t, shaped like ``x0``.

    Examples:
        >>> import jax.numpy as jnp
        >>> schedule = linear_schedule(3, beta_start=0.1, beta_end=0.3)  # ᾱ = 0.9, 0.72, 0.504
        >>> x_t = q_sample(schedule, jnp.ones((2, 1)), jnp.array([0, 2]), jnp.zeros((2, 1)))
        >>> [round(v, 4) for v in x_t[:, 0].tolist()]  # √ᾱ_t
        [0.9487, 0.7099]
    """
    checks.check_ids("t", t, schedule.num_timesteps, what="timesteps")
    checks.check_tree("x0", x0)
    checks.check_tree("noise", noise)
    alpha_bar = _per_example(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def guided_eps(eps_cond: jax.Array, eps_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
    """Classifier-free guidance ε̂ = ε_∅ + w (ε_c − ε_∅).

    Args:
        eps_cond: ε_c, the conditional prediction.
        eps_uncond: ε_∅, the unconditional prediction (same shape).
        scale: w; 1 gives the conditional model, 0 the unconditional one.

    Returns:
        ε̂, shaped like ``eps_cond``.

    Examples:
        >>> import jax.numpy as jnp
        >>> guided_eps(jnp.array([1.0]), jnp.array([0.5]), 3.0).tolist()
        [2.0]

    References:
        Ho & Salimans, `Classifier-Free Diffusion Guidance <https://arxiv.org/abs/2207.12598>`_, 2022.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)


def eps_loss(
    eps_fn: EpsFn,
    x0: jax.Array,
    context: jax.Array,
    null_context: jax.Array,
    rng: jax.Array,
    schedule: Schedule,
    *,
    p_uncond: float = 0.1,
    snr_gamma: float | None = None,
) -> jax.Array:
    """The DDPM loss mean_b w_t ‖ε − ε_θ(x_t, t, c̃)‖² (mean over batch and pixels) at uniform t.

    Args:
        eps_fn: The ε-predictor.
        x0: Clean images ``[B, …]`` (scaled to [−1, 1]).
        context: Conditioning ``[B, L, d]``.
        null_context: The empty caption's conditioning ``[L, d]`` or ``[B, L, d]``; it replaces a row's
            context with probability ``p_uncond`` (caption dropout).
        rng: Key for t, ε and the dropout draw.
        schedule: The noise schedule.
        p_uncond: Caption-dropout probability in [0, 1).
        snr_gamma: γ > 0 of the Min-SNR weight w_t = min(SNR_t, γ) / SNR_t, or ``None`` for w_t = 1.

    Returns:
        The scalar loss, float32.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> schedule = linear_schedule(10)
        >>> zero_eps = lambda x, t, c: jnp.zeros_like(x)  # predicts ε = 0: the loss is E[ε²] ≈ 1
        >>> loss = eps_loss(zero_eps, jnp.zeros((64, 8)), jnp.ones((64, 1, 2)), jnp.zeros((1, 2)),
        ...                 jax.random.key(0), schedule)
        >>> 0.8 < float(loss) < 1.2
        True
    """
    checks.static_number("p_uncond", p_uncond, low=0.0, high=1.0, high_open=True)
    if snr_gamma is not None:
        checks.static_number("snr_gamma", snr_gamma, low=0.0, low_open=True)
    batch = x0.shape[0]
    t_key, noise_key, drop_key = jax.random.split(rng, 3)
    t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    drop = jax.random.bernoulli(drop_key, p_uncond, (batch,))
    null = jnp.broadcast_to(null_context, context.shape)
    context = jnp.where(drop[:, None, None], null, context)
    prediction = eps_fn(q_sample(schedule, x0, t, noise), t, context)
    per_example = jnp.mean(jnp.square(prediction.astype(jnp.float32) - noise).reshape(batch, -1), axis=1)
    if snr_gamma is not None:
        per_example = per_example * min_snr_weight(schedule, t, snr_gamma)
    return jnp.mean(per_example)


def min_snr_weight(schedule: Schedule, t: jax.Array, gamma: float) -> jax.Array:
    """The Min-SNR-γ weight of the ε loss, min(SNR_t, γ) / SNR_t = min(1, γ (1 − ᾱ_t) / ᾱ_t).

    Args:
        schedule: the noise schedule.
        t: integer timesteps in [0, T) (checked when concrete).
        gamma: γ > 0.

    Returns:
        w_t, float32, shaped like ``t``.

    Examples:
        >>> import jax.numpy as jnp
        >>> schedule = linear_schedule(3, beta_start=0.1, beta_end=0.3)  # SNR_0 = 0.9 / 0.1 = 9
        >>> [round(w, 4) for w in min_snr_weight(schedule, jnp.array([0, 2]), 5.0).tolist()]
        [0.5556, 1.0]

    References:
        Hang et al., `Efficient Diffusion Training via Min-SNR Weighting Strategy
        <https://arxiv.org/abs/2303.09556>`_, ICCV 2023.
    """
    checks.static_number("gamma", gamma, low=0.0, low_open=True)
    checks.check_ids("t", t, schedule.num_timesteps, what="timesteps")
    alpha_bar = schedule.alphas_cumprod[t]
    return jnp.minimum(1.0, gamma * (1.0 - alpha_bar) / alpha_bar)


def ddim_timesteps(num_steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """The decreasing DDIM subsequence ``τ_i = (i − 1)·(T // S)`` for i = S..1.

    This is diffusers' "leading" spacing, without offset.

    Args:
        num_steps: S.
        num_timesteps: T.

    Returns:
        τ_S, …, τ_1, int32 ``[S]``.

    Raises:
        ValueError: ``num_steps`` outside [1, T].

    Examples:
        >>> ddim_timesteps(4, 1000).tolist()
        [750, 500, 250, 0]
    """
    checks.static_int("num_timesteps", num_timesteps, low=1, high=checks.INT32_MAX)
    checks.static_int("num_steps", num_steps, low=1, high=num_timesteps)
    return (np.arange(num_steps)[::-1] * (num_timesteps // num_steps)).astype(np.int32)


def ddim_sample(
    eps_fn: EpsFn,
    x_T: jax.Array,
    context: jax.Array,
    null_context: jax.Array | None,
    schedule: Schedule,
    *,
    num_steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    rng: jax.Array | None = None,
    clip_x0: float | None = None,
) -> jax.Array:
    """Runs DDIM from noise ``x_T`` to an image, with classifier-free guidance.

    The conditional and unconditional predictions are made in one ``eps_fn`` call on the batch
    ``[x; x]`` with contexts ``[c; ∅]``. With ``guidance_scale == 1`` (or ``null_context=None``) only the
    conditional model is evaluated.

    Args:
        eps_fn: The ε-predictor.
        x_T: Starting noise ``[B, …]``.
        context: Conditioning ``[B, L, d]``.
        null_context: Unconditional conditioning ``[L, d]`` or ``[B, L, d]``, or ``None``.
        schedule: The noise schedule.
        num_steps: DDIM steps S (see :func:`ddim_timesteps`).
        guidance_scale: w (Python float).
        eta: η ≥ 0 (0: deterministic DDIM, 1: DDPM-like).
        rng: Key for the σ_t z noise; required when ``eta > 0``.
        clip_x0: If set, x̂₀ is clipped to [−clip_x0, clip_x0] before each update (ε̂ is recomputed from
            the clipped x̂₀ so the update stays on the DDIM path).

    Returns:
        The final x₀ sample, shaped like ``x_T``.

    Examples:
        >>> import jax.numpy as jnp
        >>> schedule, x0, noise = linear_schedule(100), jnp.full((1, 2), 0.5), jnp.ones((1, 2))
        >>> oracle = lambda x, t, c: (x - jnp.sqrt(schedule.alphas_cumprod[t])[:, None] * x0) / jnp.sqrt(
        ...     1 - schedule.alphas_cumprod[t])[:, None]  # the exact ε of every x_t on x0's path
        >>> x_T = q_sample(schedule, x0, jnp.array([99]), noise)
        >>> ddim_sample(oracle, x_T, jnp.zeros((1, 1, 1)), None, schedule, num_steps=10).round(4).tolist()
        [[0.5, 0.5]]

    References:
        Song, Meng & Ermon, `Denoising Diffusion Implicit Models <https://arxiv.org/abs/2010.02502>`_,
        ICLR 2021.
    """
    checks.static_number("eta", eta, low=0.0)
    checks.static_number("guidance_scale", guidance_scale)
    if eta > 0 and rng is None:
        raise ValueError("ddim_sample: eta > 0 needs rng")
    if clip_x0 is not None:
        checks.static_number("clip_x0", clip_x0, low=0.0, low_open=True)
    guided = null_context is not None and guidance_scale != 1.0
    timesteps = jnp.asarray(ddim_timesteps(num_steps, schedule.num_timesteps))
    previous = jnp.concatenate([timesteps[1:], jnp.asarray([-1], jnp.int32)])
    both_contexts = (
        jnp.concatenate([context, jnp.broadcast_to(null_context, context.shape)]) if guided else context
    )
    rng = jax.random.key(0) if rng is None else rng
    step = _ddim_step(eps_fn, schedule, both_contexts, guidance_scale if guided else None, eta, clip_x0, rng)
    x, _ = jax.lax.scan(step, x_T, (timesteps, previous, jnp.arange(num_steps)))
    return x


def _ddim_step(
    eps_fn: EpsFn,
    schedule: Schedule,
    contexts: jax.Array,
    guidance_scale: float | None,
    eta: float,
    clip_x0: float | None,
    rng: jax.Array,
) -> Callable:
    """The ``lax.scan`` body of :func:`ddim_sample`: one DDIM update from τ_i to τ_{i−1}; ``contexts`` is
    ``[c; ∅]`` when ``guidance_scale`` is set, else ``c``."""

    def step(x, inputs):
        t, t_prev, index = inputs
        batch = x.shape[0]
        alpha = schedule.alphas_cumprod[t]
        alpha_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
        if guidance_scale is not None:
            eps_both = eps_fn(jnp.concatenate([x, x]), jnp.full((2 * batch,), t), contexts)
            eps = guided_eps(eps_both[:batch], eps_both[batch:], guidance_scale)
        else:
            eps = eps_fn(x, jnp.full((batch,), t), contexts)
        x0 = (x - jnp.sqrt(1.0 - alpha) * eps) / jnp.sqrt(alpha)
        if clip_x0 is not None:
            x0 = jnp.clip(x0, -clip_x0, clip_x0)
            eps = (x - jnp.sqrt(alpha) * x0) / jnp.sqrt(1.0 - alpha)
        sigma = eta * jnp.sqrt((1.0 - alpha_prev) / (1.0 - alpha)) * jnp.sqrt(1.0 - alpha / alpha_prev)
        direction = jnp.sqrt(jnp.maximum(1.0 - alpha_prev - sigma**2, 0.0)) * eps
        x_prev = jnp.sqrt(alpha_prev) * x0 + direction
        if eta > 0:
            x_prev = x_prev + sigma * jax.random.normal(jax.random.fold_in(rng, index), x.shape, x.dtype)
        return x_prev.astype(x.dtype), None

    return step
