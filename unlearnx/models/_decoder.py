"""Decoder-only language model (pre-LayerNorm GPT) for the LM unlearning and repeated-data studies.

For tokens x₁..x_T:

    h⁰ₜ = E[xₜ] + P[t]
    hˡ = hˡ⁻¹ + Attn(LN₁(hˡ⁻¹))              causal multi-head self-attention
    hˡ = hˡ + MLP(LN₂(hˡ))                   GELU, width mlp_ratio·d_model (absent when mlp_ratio = 0)
    logitsₜ = LN_f(h^L_t) W_U + b_U           untied unembedding

Parameter paths: ``embed/embedding``, ``pos_embed/embedding``, ``blocks_{i}/ln_1/{scale,bias}``,
``blocks_{i}/attn/{to_q,to_k,to_v}/kernel``, ``blocks_{i}/attn/to_out_0/{kernel,bias}``,
``blocks_{i}/ln_2/{scale,bias}``, ``blocks_{i}/mlp/{fc_in,fc_out}/{kernel,bias}``, ``ln_f/{scale,bias}``,
``unembed/{kernel,bias}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from unlearnx.models._attention import Attention, causal_mask
from unlearnx.models._bridge import PARAMS, Model, from_module, num_params

_EMBEDDING_MODULES = ("embed", "pos_embed", "unembed")


class FeedForward(nnx.Module):
    """``fc_out(gelu(fc_in(x)))``."""

    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.fc_in = nnx.Linear(d_model, hidden, rngs=rngs)
        self.fc_out = nnx.Linear(hidden, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc_out(jax.nn.gelu(self.fc_in(x)))


class DecoderBlock(nnx.Module):
    """Pre-LN residual block: causal self-attention, then (optionally) a feed-forward layer."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs) -> None:
        self.ln_1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = Attention(d_model, num_heads=num_heads, rngs=rngs)
        if mlp_ratio:
            self.ln_2 = nnx.LayerNorm(d_model, rngs=rngs)
            self.mlp = FeedForward(d_model, mlp_ratio * d_model, rngs=rngs)
        else:
            self.ln_2 = self.mlp = None

    def __call__(self, h: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        mixed, weights = self.attn(self.ln_1(h), mask=mask)
        h = h + mixed
        if self.mlp is not None:
            h = h + self.mlp(self.ln_2(h))
        return h, weights


class CausalTransformer(nnx.Module):
    """Token + learned position embeddings, causal pre-LN blocks and a final LayerNorm: the trunk shared by
    :class:`DecoderLM` and :class:`unlearnx.models._text_encoder.TextEncoder` (paths ``embed``, ``pos_embed``,
    ``blocks_{i}``, ``ln_f``)."""

    def __init__(
        self,
        vocab_size: int,
        *,
        max_len: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        rngs: nnx.Rngs,
    ) -> None:
        init = nnx.initializers.normal(0.02)
        self.max_len = max_len
        self.num_layers = num_layers
        self.embed = nnx.Embed(vocab_size, d_model, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Embed(max_len, d_model, embedding_init=init, rngs=rngs)
        for i in range(num_layers):
            setattr(self, f"blocks_{i}", DecoderBlock(d_model, num_heads, mlp_ratio, rngs=rngs))
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)

    def hidden(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns ``(LN_f(h^L) [B, T, d], attention [B, layers, heads, T, T])`` for int tokens ``[B, T]``."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.max_len}")
        h = self.embed(tokens) + self.pos_embed(jnp.arange(length))
        mask = causal_mask(length)
        maps = []
        for i in range(self.num_layers):
            h, weights = getattr(self, f"blocks_{i}")(h, mask)
            maps.append(weights)
        return self.ln_f(h), jnp.stack(maps, axis=-4)


class DecoderLM(CausalTransformer):
    """GPT-style decoder; see the module docstring for the equations and parameter paths."""

    def __init__(self, vocab_size: int, *, return_attention: bool, rngs: nnx.Rngs, **sizes: int) -> None:
        super().__init__(vocab_size, rngs=rngs, **sizes)
        self.return_attention = return_attention
        self.unembed = nnx.Linear(sizes["d_model"], vocab_size, rngs=rngs)

    def __call__(
        self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Returns logits ``[B, T, vocab]`` (and attention ``[B, layers, heads, T, T]`` if requested)."""
        del train, rngs  # no dropout
        h, maps = self.hidden(tokens)
        logits = self.unembed(h).astype(jnp.float32)
        return (logits, maps) if self.return_attention else logits


def check_sizes(owner: str, *, num_heads: int, mlp_ratio: int, **sizes: int) -> None:
    """Raises ``ValueError`` naming ``owner`` unless every size and ``num_heads`` are ≥ 1, ``mlp_ratio`` ≥ 0
    and ``num_heads`` divides the width (the ``d_model`` or ``width`` entry of ``sizes``)."""
    for name, value in {**sizes, "num_heads": num_heads}.items():
        if int(value) < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    if mlp_ratio < 0:
        raise ValueError(f"{owner}: mlp_ratio must be >= 0, got {mlp_ratio}")
    width_name = "d_model" if "d_model" in sizes else "width"
    width = sizes[width_name]
    if width % num_heads:
        raise ValueError(f"{owner}: {width_name} {width} is not divisible by num_heads {num_heads}")


def decoder_lm(
    vocab_size: int,
    *,
    max_len: int = 256,
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    return_attention: bool = False,
) -> Model:
    """Builds a decoder LM behind the pure ``init``/``apply`` bridge.

    ``apply(variables, tokens)`` takes int tokens ``[B, T]`` (T ≤ ``max_len``) and returns float32 logits
    ``[B, T, vocab_size]``. With ``return_attention=True`` (same parameter tree) it returns
    ``(logits, attention)`` with attention ``[B, num_layers, num_heads, T, T]``: the causal query × key
    weights the forward pass applied, each row summing to 1.

    Args:
        vocab_size: Number of token ids.
        max_len: Longest sequence (size of the learned position table).
        d_model: Residual-stream width; must be divisible by ``num_heads``.
        num_layers: Number of decoder blocks.
        num_heads: Attention heads per block.
        mlp_ratio: Feed-forward width as a multiple of ``d_model``; 0 gives an attention-only model.
        return_attention: Also return the attention weights.

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: If a size is not positive or ``d_model`` is not divisible by ``num_heads``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import models
        >>> model = models.decoder_lm(50, max_len=8, d_model=16, num_layers=1, num_heads=2)
        >>> variables = jax.eval_shape(model.init, jax.random.key(0))
        >>> jax.eval_shape(model.apply, variables, jnp.zeros((2, 8), jnp.int32)).shape
        (2, 8, 50)
    """
    check_sizes(
        "decoder_lm",
        vocab_size=vocab_size,
        max_len=max_len,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
    )
    return from_module(
        lambda rngs: DecoderLM(
            vocab_size,
            max_len=max_len,
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            return_attention=return_attention,
            rngs=rngs,
        ),
        name=f"decoder_lm_d{d_model}_l{num_layers}",
    )


def non_embedding_params(variables: Mapping[str, Any]) -> int:
    """Counts parameters outside the token/position embeddings and the unembedding (N in scaling laws).

    Args:
        variables: :func:`decoder_lm` variables (``{"params": ...}``) or a bare parameter tree; leaves may
            be arrays or ``jax.ShapeDtypeStruct``.

    Returns:
        N, the number of scalars outside the embedding and unembedding modules.

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> model = models.decoder_lm(50, max_len=8, d_model=16, num_layers=1, num_heads=2)
        >>> variables = jax.eval_shape(model.init, jax.random.key(0))
        >>> models.num_params(variables) - models.non_embedding_params(variables)  # (50 + 8 + 50)·16 + 50
        1778

    References:
        Kaplan et al., *Scaling Laws for Neural Language Models*, 2020.
    """
    params = variables[PARAMS] if PARAMS in variables else variables
    return num_params({k: v for k, v in params.items() if k not in _EMBEDDING_MODULES})
