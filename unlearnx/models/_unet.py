"""A small text-conditioned UNet with the diffusers layout: ResNet blocks with a time embedding, and
transformer blocks with self-attention ``attn1`` and cross-attention ``attn2`` over text embeddings.

For a noisy image x_t, timestep t and context C ∈ R^{L×d_c} (text-encoder rows) it predicts the noise ε:

    temb = MLP(sinusoid(t))
    ResnetBlock(h)   = shortcut(h) + conv₂(SiLU(GN(conv₁(SiLU(GN(h))) + W_t SiLU(temb))))
    Transformer2D(h) = h + proj_out(block(proj_in(GN(h))))            on the H·W pixel tokens, where
    block(z): z += attn1(LN₁ z);  z += attn2(LN₂ z, C);  z += FF(LN₃ z)
    attn2(z, C) = softmax((z W_q)(C W_k)ᵀ/√d_h) (C W_v) W_out          (W_k, W_v bias-free, as in SD)

Levels ``channels = (c₀, c₁, …)`` halve the resolution each step (``down_blocks_i``), a ``mid_block``
sits at the bottom, and ``up_blocks_i`` (``up_blocks_0`` lowest resolution, as in diffusers) take the
skip connections. Levels with ``attention[i]`` get one ``Transformer2D`` after each ResNet block.

Parameter paths follow a converted SD v1.4 Flax tree, e.g.
``down_blocks_1/attentions_0/transformer_blocks_0/attn2/to_k/kernel`` of shape ``(d_c, c₁)``, so
:func:`unlearnx.erase.cross_attention_kv` selects the same kernels here as on SD. Others:
``conv_in``, ``time_embedding/linear_{1,2}``, ``down_blocks_i/resnets_j/{norm1,conv1,time_emb_proj,norm2,
conv2,conv_shortcut}``, ``down_blocks_i/downsamplers_0/conv``, ``mid_block/{resnets_0,attentions_0,
resnets_1}``, ``up_blocks_i/upsamplers_0/conv``, ``conv_norm_out``, ``conv_out``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from unlearnx.models._attention import Attention
from unlearnx.models._bridge import Model, from_module
from unlearnx.models._decoder import FeedForward

__all__ = ["UNet", "timestep_embedding", "unet"]


def timestep_embedding(timesteps: jax.Array, dim: int, *, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding ``[cos(t·ωₖ), sin(t·ωₖ)]``, ωₖ = max_period^(−k/(dim/2)), shape ``[B, dim]``."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedding(nnx.Module):
    """``linear_2(SiLU(linear_1(e)))``."""

    def __init__(self, dim: int, out: int, *, rngs: nnx.Rngs) -> None:
        self.linear_1 = nnx.Linear(dim, out, rngs=rngs)
        self.linear_2 = nnx.Linear(out, out, rngs=rngs)

    def __call__(self, embedding: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(embedding)))


class ResnetBlock(nnx.Module):
    """GroupNorm/SiLU/conv twice with the time embedding added in between; 1×1 shortcut if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_channels, num_groups=groups, rngs=rngs)
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), padding="SAME", rngs=rngs)
        self.time_emb_proj = nnx.Linear(temb_dim, out_channels, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_channels, num_groups=groups, rngs=rngs)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), padding="SAME", rngs=rngs)
        self.conv_shortcut = (
            nnx.Conv(in_channels, out_channels, (1, 1), rngs=rngs) if in_channels != out_channels else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class BasicTransformerBlock(nnx.Module):
    """Self-attention ``attn1``, cross-attention ``attn2`` to the context, feed-forward ``ff``; pre-LN."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, *, rngs: nnx.Rngs) -> None:
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn1 = Attention(dim, num_heads=num_heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn2 = Attention(dim, context_dim, num_heads=num_heads, rngs=rngs)
        self.norm3 = nnx.LayerNorm(dim, rngs=rngs)
        self.ff = FeedForward(dim, 4 * dim, rngs=rngs)

    def __call__(self, z: jax.Array, context: jax.Array) -> jax.Array:
        z = z + self.attn1(self.norm1(z))[0]
        z = z + self.attn2(self.norm2(z), context)[0]
        return z + self.ff(self.norm3(z))


class Transformer2D(nnx.Module):
    """Pixels as tokens: GroupNorm, ``proj_in``, one transformer block, ``proj_out``, residual."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, groups: int, *, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
        self.proj_in = nnx.Linear(channels, channels, rngs=rngs)
        self.transformer_blocks_0 = BasicTransformerBlock(channels, context_dim, num_heads, rngs=rngs)
        self.proj_out = nnx.Linear(channels, channels, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        z = self.proj_in(self.norm(x)).reshape(batch, height * width, channels)
        z = self.transformer_blocks_0(z, context)
        return x + self.proj_out(z).reshape(batch, height, width, channels)


class _Resample(nnx.Module):
    """Stride-2 conv (down) or nearest ×2 + conv (up), parameters at ``conv``."""

    def __init__(self, channels: int, *, up: bool, rngs: nnx.Rngs) -> None:
        self.up = up
        self.conv = nnx.Conv(
            channels, channels, (3, 3), strides=1 if up else 2, padding="SAME" if up else 1, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class _Level(nnx.Module):
    """ResNet blocks (each followed by a Transformer2D when ``attention``, except the last one when not
    ``last_attention``: the mid block is resnet, transformer, resnet) and an optional resampler."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        *,
        temb_dim: int,
        context_dim: int,
        num_heads: int,
        groups: int,
        attention: bool,
        resample: str | None,
        rngs: nnx.Rngs,
        last_attention: bool = True,
    ) -> None:
        self.count = len(in_channels)
        self.attention = attention
        for j, channels in enumerate(in_channels):
            setattr(self, f"resnets_{j}", ResnetBlock(channels, out_channels, temb_dim, groups, rngs=rngs))
            if attention and (last_attention or j < self.count - 1):
                block = Transformer2D(out_channels, context_dim, num_heads, groups, rngs=rngs)
                setattr(self, f"attentions_{j}", block)
        if resample is not None:
            name = "upsamplers_0" if resample == "up" else "downsamplers_0"
            setattr(self, name, _Resample(out_channels, up=resample == "up", rngs=rngs))
        self.resample = resample

    def layer(self, j: int, h: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        h = getattr(self, f"resnets_{j}")(h, temb)
        return getattr(self, f"attentions_{j}")(h, context) if self.attention else h


class UNet(nnx.Module):
    """The text-conditioned ε-predictor; see the module docstring."""

    def __init__(
        self,
        *,
        in_channels: int,
        channels: Sequence[int],
        attention: Sequence[bool],
        layers_per_block: int,
        context_dim: int,
        num_heads: int,
        groups: int,
        rngs: nnx.Rngs,
    ) -> None:
        c0 = channels[0]
        temb_dim = 4 * c0
        self.num_levels = len(channels)
        self.layers_per_block = layers_per_block
        self.time_dim = c0
        self.conv_in = nnx.Conv(in_channels, c0, (3, 3), padding="SAME", rngs=rngs)
        self.time_embedding = TimestepEmbedding(c0, temb_dim, rngs=rngs)
        common = {"temb_dim": temb_dim, "context_dim": context_dim, "num_heads": num_heads, "groups": groups}
        skips, previous = [c0], c0
        for i, width in enumerate(channels):
            last = i == len(channels) - 1
            ins = [previous] + [width] * (layers_per_block - 1)
            block = _Level(
                ins, width, attention=attention[i], resample=None if last else "down", rngs=rngs, **common
            )
            setattr(self, f"down_blocks_{i}", block)
            skips += [width] * (layers_per_block + (0 if last else 1))
            previous = width
        self.mid_block = _Level(
            [previous, previous],
            previous,
            attention=True,
            resample=None,
            last_attention=False,
            rngs=rngs,
            **common,
        )
        for k, i in enumerate(reversed(range(len(channels)))):
            width = channels[i]
            ins = []
            for _ in range(layers_per_block + 1):
                ins.append(previous + skips.pop())
                previous = width
            resample = None if i == 0 else "up"
            setattr(
                self,
                f"up_blocks_{k}",
                _Level(ins, width, attention=attention[i], resample=resample, rngs=rngs, **common),
            )
        self.conv_norm_out = nnx.GroupNorm(c0, num_groups=groups, rngs=rngs)
        self.conv_out = nnx.Conv(c0, in_channels, (3, 3), padding="SAME", rngs=rngs)

    def __call__(
        self,
        inputs: tuple[jax.Array, jax.Array, jax.Array],
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Predicts ε ``[B, H, W, C]`` from ``(x_t [B, H, W, C], t [B], context [B, L, d_c])``."""
        del train, rngs  # no dropout
        x, timesteps, context = inputs
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (x.shape[0],))
        temb = self.time_embedding(timestep_embedding(timesteps, self.time_dim))
        h = self.conv_in(x)
        skips = [h]
        for i in range(self.num_levels):
            level = getattr(self, f"down_blocks_{i}")
            for j in range(level.count):
                h = level.layer(j, h, temb, context)
                skips.append(h)
            if level.resample is not None:
                h = level.downsamplers_0(h)
                skips.append(h)
        h = self.mid_block.resnets_0(h, temb)
        h = self.mid_block.attentions_0(h, context)
        h = self.mid_block.resnets_1(h, temb)
        for k in range(self.num_levels):
            level = getattr(self, f"up_blocks_{k}")
            for j in range(level.count):
                h = level.layer(j, jnp.concatenate([h, skips.pop()], axis=-1), temb, context)
            if level.resample is not None:
                h = level.upsamplers_0(h)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


def unet(
    *,
    image_size: int = 16,
    in_channels: int = 3,
    channels: Sequence[int] = (32, 64, 64),
    attention: Sequence[bool] = (False, True, True),
    layers_per_block: int = 1,
    context_dim: int = 64,
    num_heads: int = 4,
    groups: int = 8,
) -> Model:
    """Builds the UNet behind the pure :class:`~unlearnx.models._bridge.Model` bridge.

    ``model.apply(variables, (x_t, t, context))`` with ``x_t`` ``[B, H, W, in_channels]``, integer or float
    timesteps ``t`` ``[B]`` (or a scalar) and context ``[B, L, context_dim]`` returns ε̂ of ``x_t``'s shape.
    The mid block always has a transformer; ``attention[i]`` adds them to level i.

    Args:
        image_size: Side length the model is meant for (must be divisible by 2^(levels − 1)).
        in_channels: Image channels.
        channels: Width of each level.
        attention: Whether each level has transformer blocks.
        layers_per_block: ResNet blocks per down level (up levels get one more).
        context_dim: Width of the context rows (text-encoder width).
        num_heads: Heads of every attention.
        groups: GroupNorm groups (must divide every width).

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: Inconsistent sizes.

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> model = models.unet(image_size=4, channels=(8,), attention=(False,), context_dim=8, num_heads=2,
        ...                     groups=4)
        >>> models.num_params(jax.eval_shape(model.init, jax.random.key(0)))
        11867

    References:
        Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, CVPR 2022.
    """
    channels, attention = tuple(int(c) for c in channels), tuple(bool(a) for a in attention)
    if not channels or len(attention) != len(channels):
        raise ValueError(f"unet: channels {channels} and attention {attention} need the same nonzero length")
    if image_size % (2 ** (len(channels) - 1)):
        raise ValueError(f"unet: image_size {image_size} is not divisible by 2^{len(channels) - 1}")
    bad = [c for c in channels if c % groups or c % num_heads]
    if bad or layers_per_block < 1 or context_dim < 1:
        raise ValueError(
            f"unet: widths {bad} not divisible by groups={groups}/num_heads={num_heads}, or "
            f"layers_per_block={layers_per_block} / context_dim={context_dim} < 1"
        )
    return from_module(
        lambda rngs: UNet(
            in_channels=in_channels,
            channels=channels,
            attention=attention,
            layers_per_block=layers_per_block,
            context_dim=context_dim,
            num_heads=num_heads,
            groups=groups,
            rngs=rngs,
        ),
        name="unet",
    )
