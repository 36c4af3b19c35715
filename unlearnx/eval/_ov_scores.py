"""OV copying scores of attention heads (Olsson et al. 2022), re-exported by :mod:`unlearnx.eval.induction`.

Σλ / Σ|λ| over the eigenvalues λ of a head's OV circuit W_U W_O W_V W_E: +1 for a pure copying circuit, −1
for anti-copying.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def ov_copying_score(
    w_embed: jax.Array, w_value: jax.Array, w_out: jax.Array, w_unembed: jax.Array
) -> jax.Array:
    """Σλ / Σ|λ| over the eigenvalues λ of the OV circuit W_U W_O W_V W_E (0 for an all-zero circuit).

    Kernels are in Flax's row layout (``x @ W``): ``w_embed`` ``[V, d]``, ``w_value`` ``[d, d_head]``,
    ``w_out`` ``[d_head, d]``, ``w_unembed`` ``[d, V]``; the circuit in that layout is
    M = W_E W_V W_O W_U ``[V, V]``, whose transpose is the column-convention W_U W_O W_V W_E (same
    eigenvalues). The nonzero eigenvalues of M equal those of the small ``[d_head, d_head]`` product
    W_O W_U W_E W_V (cyclic permutation), which is what is decomposed. LayerNorms are ignored, as in
    Olsson et al. ``jnp.linalg.eigvals`` runs on CPU.

    Args:
        w_embed: Token embedding W_E ``[V, d]``.
        w_value: The head's value kernel W_V ``[d, d_head]``.
        w_out: The head's rows of the output kernel W_O ``[d_head, d]``.
        w_unembed: Unembedding W_U ``[d, V]``.

    Returns:
        The score in [−1, 1], a float32 scalar.

    Raises:
        ValueError: If the kernels are not 2-D or their shapes do not chain ``[V, d] [d, h] [h, d] [d, V]``.

    Examples:
        With identity kernels M = I (eigenvalues 1, 1); negating W_V flips every eigenvalue; W_V =
        diag(3, −1) gives eigenvalues 3 and −1, so (3 − 1) / (3 + 1) = 1/2.

        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> eye = jnp.eye(2)
        >>> float(induction.ov_copying_score(eye, eye, eye, eye))
        1.0
        >>> float(induction.ov_copying_score(eye, -eye, eye, eye))
        -1.0
        >>> round(float(induction.ov_copying_score(eye, jnp.diag(jnp.array([3.0, -1.0])), eye, eye)), 4)
        0.5
    """
    shapes = [jnp.shape(w) for w in (w_embed, w_value, w_out, w_unembed)]
    if any(len(s) != 2 for s in shapes) or not (
        shapes[0][1] == shapes[1][0]
        and shapes[1][1] == shapes[2][0]
        and shapes[2][1] == shapes[3][0]
        and shapes[3][1] == shapes[0][0]
    ):
        raise ValueError(f"OV circuit kernels must be [V, d], [d, h], [h, d], [d, V]; got {shapes}")
    small = w_out @ w_unembed @ w_embed @ w_value
    eigenvalues = jnp.linalg.eigvals(small.astype(jnp.float32))
    magnitude = jnp.sum(jnp.abs(eigenvalues))
    return jnp.where(
        magnitude > 0, jnp.real(jnp.sum(eigenvalues)) / jnp.where(magnitude > 0, magnitude, 1), 0.0
    )


def decoder_ov_scores(params: Mapping[str, Any], num_heads: int) -> np.ndarray:
    """OV copying score of every head of a :func:`unlearnx.models.decoder_lm`, ``[layers, heads]``.

    Reads ``embed/embedding``, ``blocks_{i}/attn/{to_v,to_out_0}/kernel`` and ``unembed/kernel`` (the
    ``params`` collection, full variables or an NNX ``State``); head h owns columns
    ``h·d_head:(h+1)·d_head`` of ``to_v`` and the same rows of ``to_out_0``. Meaningful for
    attention-only models (``mlp_ratio=0``).

        score[l, h] = Σλ / Σ|λ|, λ the eigenvalues of W_U W_O^{l,h} W_V^{l,h} W_E (:func:`ov_copying_score`).

    Args:
        params: The model's parameters: ``{"params": ...}`` variables, the ``params`` dict itself, or an
            NNX ``State``.
        num_heads: Attention heads per block; must divide the width of every ``to_v`` kernel.

    Returns:
        float64 NumPy array ``[layers, heads]``.

    Raises:
        ValueError: If the parameters lack ``embed``, ``unembed`` or any ``blocks_{i}``, or a ``to_v``
            width is not divisible by ``num_heads``.

    Examples:
        One block, two heads of width 1, identity embeddings: head 0 carries +1 (copying), head 1 carries −1
        through its value column (anti-copying).

        >>> import numpy as np
        >>> from unlearnx.eval import induction
        >>> eye = np.eye(2)
        >>> attn = {"to_v": {"kernel": np.diag([1.0, -1.0])}, "to_out_0": {"kernel": eye}}
        >>> params = {"embed": {"embedding": eye}, "unembed": {"kernel": eye}, "blocks_0": {"attn": attn}}
        >>> induction.decoder_ov_scores({"params": params}, num_heads=2).tolist()
        [[1.0, -1.0]]
    """
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    params = params["params"] if "params" in params else params
    layers = sorted(int(k.removeprefix("blocks_")) for k in params if k.startswith("blocks_"))
    if not layers or "embed" not in params or "unembed" not in params:
        raise ValueError(f"decoder_ov_scores: expected decoder_lm parameters, got keys {sorted(params)}")
    embed, unembed = params["embed"]["embedding"], params["unembed"]["kernel"]
    scores = np.zeros((len(layers), num_heads))
    for layer in layers:
        attn = params[f"blocks_{layer}"]["attn"]
        value, out = attn["to_v"]["kernel"], attn["to_out_0"]["kernel"]
        if value.shape[1] % num_heads:
            raise ValueError(
                f"blocks_{layer}/attn/to_v/kernel width {value.shape[1]} not divisible by {num_heads}"
            )
        width = value.shape[1] // num_heads
        for head in range(num_heads):
            cols = slice(head * width, (head + 1) * width)
            scores[layer, head] = float(ov_copying_score(embed, value[:, cols], out[cols, :], unembed))
    return scores
