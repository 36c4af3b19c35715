"""Copying and induction-head measures of a language model (Olsson et al. 2022; Hernandez et al. 2022).

* **Prefix matching** (per head): on a sequence, query position t whose token occurred earlier, last at
  position s < t, scores the attention weight A[t, s + 1] on the token that *followed* that earlier
  occurrence. Averaged over all such (sequence, t); an induction head scores ≈ 1. Measured on uniformly
  random tokens repeated twice (:func:`repeated_random_tokens`).
* **Copying loss**: next-token loss on the second copy of a held-out segment repeated twice in context;
  :func:`masked_copying_loss` for copies anywhere in a row (e.g. :func:`unlearnx.data.repeated_spans`).
* **ICL score**: loss at a late position minus loss at an early one (negative when context helps).
* **OV copying score**: Σλ / Σ|λ| over the eigenvalues λ of a head's OV circuit W_U W_O W_V W_E (token →
  logits through the head's values and output); +1 for a pure copying circuit, −1 for anti-copying.

All functions run under ``jax.jit``; input checks that need values (repeats present, copies equal, token ids
within the logits' vocabulary) run only when the inputs are concrete; sizes and positions are static.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _losses
from unlearnx import _validation as checks
from unlearnx.eval._ov_scores import decoder_ov_scores, ov_copying_score
from unlearnx.train import next_token_losses

__all__ = [
    "chance_prefix_matching",
    "copying_loss",
    "decoder_ov_scores",
    "icl_score",
    "masked_copying_loss",
    "ov_copying_score",
    "prefix_matching_score",
    "previous_occurrence",
    "repeated_random_tokens",
]


def _check_tokens(tokens: Any, name: str = "tokens") -> None:
    if jnp.ndim(tokens) != 2 or not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array [batch, T], got {jnp.shape(tokens)}")


def previous_occurrence(tokens: jax.Array) -> jax.Array:
    """For every position t the latest earlier position holding the same token, or −1; ``[batch, T]``.

        s_b(t) = max{s < t : x[b, s] = x[b, t]},  or −1 when the set is empty.

    Args:
        tokens: Integer tokens ``[batch, T]``.

    Returns:
        int32 ``[batch, T]``: s_b(t) at every position.

    Raises:
        ValueError: Unless ``tokens`` is an integer array ``[batch, T]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> induction.previous_occurrence(jnp.array([[5, 7, 5, 5, 7]])).tolist()  # 5 at 0, 2, 3; 7 at 1, 4
        [[-1, -1, 0, 2, 1]]
    """
    _check_tokens(tokens)
    length = tokens.shape[1]
    positions = jnp.arange(length)
    same = (tokens[:, :, None] == tokens[:, None, :]) & (positions[None, None, :] < positions[None, :, None])
    return jnp.max(jnp.where(same, positions[None, None, :], -1), axis=-1)


def prefix_matching_score(attention: jax.Array, tokens: jax.Array, *, period: int | None = None) -> jax.Array:
    """Per-head prefix-matching score, ``[layers, heads]``.

        score[l, h] = (1/|Q|) Σ_{(b, t) ∈ Q} A[b, l, h, t, s_b(t) + 1],
        s_b(t) = max{s < t : x[b, s] = x[b, t]},  Q = {(b, t) : s_b(t) exists}.

    With ``period`` ℓ (rows made of a segment repeated, as :func:`repeated_random_tokens` builds them;
    Olsson et al.'s definition) the earlier occurrence is the same token one copy back, s_b(t) = t − ℓ,
    and Q = {t ≥ ℓ}. The two agree when no token repeats inside a segment; with repeats inside a segment
    (bytes, ℓ ≈ 50) only the ``period`` form gives a perfect induction head the score 1.

    Uniform causal attention (A[t, ·] = 1/(t + 1)) scores the mean of 1/(t + 1) over Q.

    Args:
        attention: ``[batch, layers, heads, T, T]`` query × key weights (rows sum to 1).
        tokens: Integer tokens ``[batch, T]``.
        period: Length ℓ of the repeated segment, 1 ≤ ℓ < T; ``None`` uses the latest earlier occurrence.

    Returns:
        float32 ``[layers, heads]``. When no token repeats it is 0 under ``jit``; concrete inputs raise.

    Raises:
        ValueError: On mismatched shapes, or (concrete inputs) when no token occurs twice in any row.

    Examples:
        Tokens 1 2 1 2: t = 2 should attend to position 1, t = 3 to position 2. Head 0 does exactly that
        (an induction head); head 1 attends uniformly, scoring (1/3 + 1/4) / 2 = 7/24.

        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> tokens = jnp.array([[1, 2, 1, 2]])
        >>> perfect = jnp.eye(4)[jnp.array([0, 0, 1, 2])]  # row t attends to key s(t) + 1
        >>> uniform = jnp.tril(jnp.ones((4, 4))) / jnp.arange(1, 5)[:, None]
        >>> attention = jnp.stack([perfect, uniform])[None, None]  # [batch 1, layers 1, heads 2, 4, 4]
        >>> induction.prefix_matching_score(attention, tokens).round(4).tolist()
        [[1.0, 0.2917]]
        >>> induction.prefix_matching_score(attention, tokens, period=2).round(4).tolist()
        [[1.0, 0.2917]]
    """
    _check_tokens(tokens)
    if jnp.ndim(attention) != 5 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"attention must be [batch, layers, heads, T, T], got {jnp.shape(attention)}")
    if (attention.shape[0], attention.shape[-1]) != tokens.shape:
        raise ValueError(f"attention {attention.shape} and tokens {tokens.shape} disagree on [batch, T]")
    if period is None:
        earlier = previous_occurrence(tokens)
    else:
        checks.static_int("period", period, low=1, high=tokens.shape[1] - 1)
        earlier = jnp.broadcast_to(jnp.arange(tokens.shape[1]) - period, tokens.shape)
    valid = earlier >= 0
    if not checks.is_traced(tokens) and not bool(jnp.any(valid)):
        raise ValueError("prefix_matching_score: no token occurs twice in any row of tokens")
    target = jnp.clip(earlier + 1, 0, tokens.shape[1] - 1)  # s + 1 ≤ t, so always in the causal window
    picked = jnp.take_along_axis(attention, target[:, None, None, :, None], axis=-1)[..., 0]
    weight = valid.astype(jnp.float32)[:, None, None, :]
    total = jnp.sum(picked.astype(jnp.float32) * weight, axis=(0, 3))
    return total / jnp.maximum(jnp.sum(valid), 1)


def chance_prefix_matching(length: int, period: int) -> float:
    """The prefix-matching score of uniform causal attention (A[t, ·] = 1/(t + 1)) on rows of a segment of
    ``period`` tokens repeated to ``length``: the chance level, mean of 1/(t + 1) over t ∈ [period, length).

        chance = (1 / (T − ℓ)) Σ_{t=ℓ}^{T−1} 1/(t + 1),  T = ``length``, ℓ = ``period``.

    Args:
        length: Row length T ≥ 2.
        period: Segment length ℓ, 1 ≤ ℓ < T.

    Returns:
        The chance-level score, a Python float in (0, 1).

    Raises:
        ValueError: Unless 1 ≤ period < length.

    Examples:
        >>> from unlearnx.eval import induction
        >>> induction.chance_prefix_matching(4, 2)  # (1/3 + 1/4) / 2 = 7/24
        0.291667
    """
    checks.static_int("length", length, low=2, high=checks.INT32_MAX)
    checks.static_int("period", period, low=1, high=length - 1)
    return float(np.mean(1.0 / (np.arange(period, length, dtype=np.float64) + 1.0)))


def repeated_random_tokens(
    key: jax.Array, batch: int, length: int, vocab_size: int, repeats: int = 2
) -> jax.Array:
    """Uniform random tokens r₁..r_ℓ repeated ``repeats`` times per row, ``[batch, repeats·length]``.

        x[b] = (r₁ … r_ℓ)^repeats,  r_i ~ Uniform{0, …, V − 1} i.i.d.

    Args:
        key: PRNG key.
        batch: Number of rows.
        length: Segment length ℓ.
        vocab_size: Tokens are drawn from [0, ``vocab_size``).
        repeats: Copies of the segment in each row.

    Returns:
        int32 tokens ``[batch, repeats·length]``.

    Raises:
        ValueError: Unless every size is a positive int.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> tokens = induction.repeated_random_tokens(jax.random.key(0), 2, 3, vocab_size=10, repeats=3)
        >>> tokens.shape, bool(jnp.all(tokens == jnp.tile(tokens[:, :3], (1, 3))))  # three equal copies
        ((2, 9), True)
    """
    for name, value in (
        ("batch", batch),
        ("length", length),
        ("vocab_size", vocab_size),
        ("repeats", repeats),
    ):
        checks.static_int(name, value, low=1, high=checks.INT32_MAX)
    segment = jax.random.randint(key, (batch, length), 0, vocab_size)
    return jnp.tile(segment, (1, repeats))


def copying_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token loss on the second copy of segments repeated twice, a scalar.

    ``tokens`` is ``[batch, 2ℓ]`` with ``tokens[:, :ℓ] == tokens[:, ℓ:]``. The targets are second-copy
    tokens x_t, t ∈ [ℓ + 1, 2ℓ), predicted from ``logits[:, t − 1]``: the positions whose predecessor also
    lies in the second copy, i.e. where copying from the first copy can predict the token (the first
    token of the second copy cannot be known to start a repeat). First-copy tokens are never scored.

        L = (1/B) Σ_b (1/(ℓ − 1)) Σ_{t=ℓ+1}^{2ℓ−1} −log softmax(logits[b, t − 1])[x_{b,t}].

    Args:
        logits: ``[batch, 2ℓ, vocab]``.
        tokens: Integer tokens ``[batch, 2ℓ]``, ℓ ≥ 2, both halves equal.

    Returns:
        L, a float32 scalar.

    Raises:
        ValueError: On bad shapes, an odd or too short length, or (concrete inputs) unequal copies.

    Examples:
        With ℓ = 2 only x₃ = 2 is scored, from ``logits[:, 2]``; giving token 2 the logit ln 4 against
        four zeros makes p = 4 / (4 + 4) = 1/2, a loss of ln 2 (the other, uniform positions do not count).

        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> logits = jnp.zeros((1, 4, 5)).at[0, 2, 2].set(jnp.log(4.0))
        >>> round(float(induction.copying_loss(logits, jnp.array([[1, 2, 1, 2]]))), 4)  # ln 2
        0.6931
    """
    _check_tokens(tokens)
    batch, length = tokens.shape
    if length % 2 or length < 4:
        raise ValueError(f"copying_loss needs tokens [batch, 2ℓ] with ℓ >= 2, got T = {length}")
    if jnp.shape(logits)[:2] != (batch, length) or jnp.ndim(logits) != 3:
        raise ValueError(f"logits {jnp.shape(logits)} must be [batch, T, vocab] for tokens {tokens.shape}")
    half = length // 2
    checks.check_ids("tokens", tokens, jnp.shape(logits)[-1], what="token ids")
    if not checks.is_traced(tokens) and not bool(jnp.all(tokens[:, :half] == tokens[:, half:])):
        raise ValueError("copying_loss: tokens[:, :ℓ] and tokens[:, ℓ:] must be the same segment")
    mask = jnp.broadcast_to(jnp.arange(length) > half, (batch, length))
    return jnp.mean(next_token_losses(logits, {"x": tokens, "mask": mask}))


def masked_copying_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token loss over the marked targets, pooled over all rows, a scalar:

        L = Σ_{b,t} m_{b,t} ℓ_{b,t} / Σ_{b,t} m_{b,t},  ℓ_{b,t} = −log softmax(logits[b, t − 1])[x_{b,t}],

    so rows with more marked targets weigh more (unlike the per-row mean of :func:`copying_loss`). ``mask``
    marks second-copy targets, e.g. :meth:`unlearnx.data.RepeatedSpans.copy_mask`; position 0 has no
    prediction and must be unmarked. NaN when nothing is marked.

    Args:
        logits: ``[batch, T, vocab]``.
        tokens: Integer tokens ``[batch, T]``.
        mask: ``[batch, T]`` boolean or 0/1 marks m on target positions; ``mask[:, 0]`` must be 0.

    Returns:
        L, a float32 scalar (NaN when nothing is marked).

    Raises:
        ValueError: On bad shapes, token ids outside the logits' vocabulary, or (concrete inputs) a marked
            position 0.

    Examples:
        Two marked targets over V = 5: x₂ = 1 gets p = 4 / (4 + 4) from the logit ln 4 at position 1
        (loss ln 2); x₃ is predicted uniformly (loss ln 5). The mean is (ln 2 + ln 5) / 2 = ln √10.

        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> logits = jnp.zeros((1, 4, 5)).at[0, 1, 1].set(jnp.log(4.0))
        >>> mask = jnp.array([[False, False, True, True]])
        >>> round(float(induction.masked_copying_loss(logits, jnp.array([[1, 2, 1, 2]]), mask)), 4)
        1.1513
    """
    _check_tokens(tokens)
    if jnp.ndim(logits) != 3 or jnp.shape(logits)[:2] != tokens.shape:
        raise ValueError(f"logits {jnp.shape(logits)} must be [batch, T, vocab] for tokens {tokens.shape}")
    if jnp.shape(mask) != tokens.shape:
        raise ValueError(f"mask {jnp.shape(mask)} must match tokens {tokens.shape}")
    checks.check_ids("tokens", tokens, jnp.shape(logits)[-1], what="token ids")
    if not checks.is_traced(mask) and bool(jnp.any(jnp.asarray(mask)[:, 0])):
        raise ValueError("masked_copying_loss: mask marks position 0, which has no prediction")
    nll = _losses.token_nll(logits[:, :-1], tokens[:, 1:])
    weight = jnp.asarray(mask)[:, 1:].astype(jnp.float32)
    total = jnp.sum(weight)
    return jnp.where(total > 0, jnp.sum(nll * weight) / jnp.maximum(total, 1.0), jnp.nan)


def _window(name: str, position: Any) -> tuple[int, int]:
    """A position ``t`` as the window ``(t, t + 1)``, or a ``(start, stop)`` pair of static ints."""
    if isinstance(position, tuple | list) and len(position) == 2:
        return tuple(checks.static_int(f"{name}[{i}]", p) for i, p in enumerate(position))
    if isinstance(position, tuple | list):
        raise ValueError(f"{name} must be a position or a (start, stop) window, got {position!r}")
    value = checks.static_int(name, position)
    return value, value + 1


def icl_score(
    logits: jax.Array, tokens: jax.Array, *, late: int | tuple[int, int], early: int | tuple[int, int]
) -> jax.Array:
    """In-context-learning score: mean loss at position(s) ``late`` minus mean loss at ``early``.

        ICL = (1/B) Σ_b mean_{t ∈ late} ℓ_{b,t} − (1/B) Σ_b mean_{t ∈ early} ℓ_{b,t},
        ℓ_{b,t} = −log p(x_{b,t} | x_{b,<t}).

    Args:
        logits: ``[batch, T, vocab]``.
        tokens: ``[batch, T]``.
        late: A target position, or a window ``(start, stop)`` of positions averaged (paper: ~500 of
            1024+; at context 256: ~200–250).
        early: Likewise (paper: ~50); every early position precedes every late one, all in [1, T − 1].

    Returns:
        ICL, a float32 scalar; negative when the later position is predicted better.

    Raises:
        ValueError: On bad shapes or positions.

    Examples:
        Over V = 5 the early target x₁ is predicted uniformly (loss ln 5); the late target x₄ gets the logit
        ln 4 against four zeros, p = 1/2 (loss ln 2). ICL = ln 2 − ln 5 = ln 0.4.

        >>> import jax.numpy as jnp
        >>> from unlearnx.eval import induction
        >>> logits = jnp.zeros((1, 5, 5)).at[0, 3, 4].set(jnp.log(4.0))
        >>> tokens = jnp.array([[0, 1, 2, 3, 4]])
        >>> round(float(induction.icl_score(logits, tokens, late=4, early=1)), 4)
        -0.9163
        >>> round(float(induction.icl_score(logits, tokens, late=(3, 5), early=(1, 3))), 4)  # ½ ln 0.4
        -0.4581
    """
    _check_tokens(tokens)
    batch, length = tokens.shape
    if jnp.ndim(logits) != 3 or jnp.shape(logits)[:2] != (batch, length):
        raise ValueError(f"logits {jnp.shape(logits)} must be [batch, T, vocab] for tokens {tokens.shape}")
    checks.check_ids("tokens", tokens, jnp.shape(logits)[-1], what="token ids")
    windows = [_window(name, p) for name, p in (("early", early), ("late", late))]
    (early_lo, early_hi), (late_lo, late_hi) = windows
    if not (1 <= early_lo < early_hi <= late_lo < late_hi <= length):
        raise ValueError(
            f"icl_score needs 1 <= early < late <= T - 1 = {length - 1} (windows as [start, stop)), "
            f"got early={early}, late={late}"
        )

    def loss_in(lo: int, hi: int) -> jax.Array:
        positions = jnp.arange(length)
        mask = jnp.broadcast_to((positions >= lo) & (positions < hi), (batch, length))
        return jnp.mean(next_token_losses(logits, {"x": tokens, "mask": mask}))

    return loss_in(late_lo, late_hi) - loss_in(early_lo, early_hi)
