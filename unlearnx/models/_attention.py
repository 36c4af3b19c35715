"""Multi-head attention with the diffusers parameter names, returning its attention weights.

One module serves self-attention (decoder LM, text encoder, UNet ``attn1``) and cross-attention (UNet
``attn2``, whose bias-free ``to_k``/``to_v`` kernels are what closed-form concept erasure edits):

    Q = x W_q,  K = c W_k,  V = c W_v                      (c = x for self-attention)
    A_h = softmax(Q_h K_hᵀ / √d_head + mask)               [query × key, rows sum to 1]
    out = concat_h(A_h V_h) W_out + b_out

Parameter paths: ``to_q/kernel``, ``to_k/kernel``, ``to_v/kernel`` (no biases, as in Stable Diffusion),
``to_out_0/{kernel,bias}``. Kernels are in Flax layout ``(d_in, d_out)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def attention_weights(query: jax.Array, key: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax attention weights ``softmax(q kᵀ / √d + mask)``.

    Args:
        query: ``[..., Tq, heads, d_head]``.
        key: ``[..., Tk, heads, d_head]``.
        mask: Optional boolean array broadcastable to ``[..., heads, Tq, Tk]``; ``False`` entries get
            zero weight. Every query row must keep at least one key.

    Returns:
        ``[..., heads, Tq, Tk]`` in float32, each row summing to 1.
    """
    scores = jnp.einsum("...qhd,...khd->...hqk", query, key).astype(jnp.float32)
    scores = scores / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def causal_mask(length: int) -> jax.Array:
    """Boolean ``[length, length]`` lower-triangular mask: query t sees keys 0..t."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))


class Attention(nnx.Module):
    """Multi-head (self- or cross-) attention with diffusers names.

    Args:
        query_dim: Width of the queries' input ``x`` (and of the output).
        context_dim: Width of the keys'/values' input ``c``; ``None`` means self-attention (= query_dim).
        num_heads: Number of heads.
        head_dim: Width of each head; defaults to ``query_dim // num_heads``.
        rngs: Random streams for initialisation.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        *,
        num_heads: int,
        head_dim: int | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        if head_dim is None:
            if query_dim % num_heads:
                raise ValueError(f"query_dim {query_dim} is not divisible by num_heads {num_heads}")
            head_dim = query_dim // num_heads
        context_dim = query_dim if context_dim is None else context_dim
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.to_q = nnx.Linear(query_dim, inner, use_bias=False, rngs=rngs)
        self.to_k = nnx.Linear(context_dim, inner, use_bias=False, rngs=rngs)
        self.to_v = nnx.Linear(context_dim, inner, use_bias=False, rngs=rngs)
        self.to_out_0 = nnx.Linear(inner, query_dim, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Attends from ``x`` ``[..., Tq, query_dim]`` to ``context`` ``[..., Tk, context_dim]``.

        Returns:
            ``(out, weights)``: the output ``[..., Tq, query_dim]`` and the attention weights
            ``[..., heads, Tq, Tk]`` that produced it.
        """
        context = x if context is None else context
        query = self._heads(self.to_q(x))
        key = self._heads(self.to_k(context))
        value = self._heads(self.to_v(context))
        weights = attention_weights(query, key, mask)
        mixed = jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value)
        out = self.to_out_0(mixed.reshape(*mixed.shape[:-2], self.num_heads * self.head_dim))
        return out, weights
