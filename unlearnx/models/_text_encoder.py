"""Small causal transformer text encoder: tokens → per-token embeddings, the conditioning of a text-to-image
UNet (the role CLIP's text tower plays in Stable Diffusion).

For tokens x₁..x_L (BOS, words, EOS, padding):

    h⁰ₜ = E[xₜ] + P[t]
    hˡ = hˡ⁻¹ + Attn(LN₁(hˡ⁻¹)),  hˡ = hˡ + MLP(LN₂(hˡ))     causal, as CLIP's text transformer
    cₜ = LN_f(h^L_t)                                          the output rows C ∈ R^{L×d}

The attention is causal, so the rows after EOS (padding) see the whole prompt and carry it, as SD's padded
CLIP rows do; closed-form erasure therefore has to treat all L rows. The blocks are the decoder LM's
(:class:`unlearnx.models._decoder.CausalTransformer`).

Parameter paths: ``embed/embedding``, ``pos_embed/embedding``, ``blocks_{i}/…`` (see
:mod:`unlearnx.models._decoder`), ``ln_f/{scale,bias}``.
"""

from __future__ import annotations

import jax
from flax import nnx

from unlearnx.models._bridge import Model, from_module
from unlearnx.models._decoder import CausalTransformer, check_sizes

__all__ = ["TextEncoder", "text_encoder"]


class TextEncoder(CausalTransformer):
    """Causal transformer over a padded token row; see the module docstring."""

    def __init__(self, vocab_size: int, *, length: int, width: int, rngs: nnx.Rngs, **sizes: int) -> None:
        super().__init__(vocab_size, max_len=length, d_model=width, rngs=rngs, **sizes)
        self.length = length

    def __call__(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns the embeddings ``[B, L, width]`` of int tokens ``[B, L]``."""
        del train, rngs  # no dropout
        if tokens.shape[-1] != self.length:
            raise ValueError(f"text_encoder: expected {self.length} tokens per row, got {tokens.shape[-1]}")
        return self.hidden(tokens)[0]


def text_encoder(
    vocab_size: int,
    *,
    length: int = 16,
    width: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_ratio: int = 4,
) -> Model:
    """Builds the text encoder behind the pure :class:`~unlearnx.models._bridge.Model` bridge.

    ``model.apply(variables, tokens)`` maps int32 tokens ``[B, L]`` to float32 embeddings ``[B, L, width]``.

    Args:
        vocab_size: Number of token ids.
        length: Padded token length L (the positional table's size).
        width: Embedding width d.
        num_layers: Transformer blocks.
        num_heads: Attention heads (must divide ``width``).
        mlp_ratio: Feed-forward width as a multiple of ``width``.

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: Non-positive sizes, or ``num_heads`` not dividing ``width``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import models
        >>> model = models.text_encoder(30, length=6, width=8, num_layers=1, num_heads=2)
        >>> variables = jax.eval_shape(model.init, jax.random.key(0))
        >>> jax.eval_shape(model.apply, variables, jnp.zeros((3, 6), jnp.int32)).shape  # [B, L, width]
        (3, 6, 8)
    """
    check_sizes(
        "text_encoder",
        vocab_size=vocab_size,
        length=length,
        width=width,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
    )
    return from_module(
        lambda rngs: TextEncoder(
            vocab_size,
            length=length,
            width=width,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            rngs=rngs,
        ),
        name="text_encoder",
    )
