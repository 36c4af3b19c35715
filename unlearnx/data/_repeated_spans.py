"""Sequences holding a random token span followed by its repeat, on which small attention models form
induction heads (Olsson et al. 2022; the fallback of ``shared/papers/repeated_data.md`` §7).

Row i of a base array (text chunks, or anything else) gets, with the rows chosen by a seeded draw, one span
of ℓᵢ uniformly random tokens r₁..r_ℓ written at positions aᵢ..aᵢ + ℓᵢ − 1 and again gᵢ positions after it,
at bᵢ..bᵢ + ℓᵢ − 1 with bᵢ = aᵢ + ℓᵢ + gᵢ (gᵢ = 0, right after it, unless ``max_gap`` > 0). The length ℓᵢ is
uniform on [``min_span``, ``max_span``], the gap gᵢ on [0, min(``max_gap``, L − 2ℓᵢ)] and the start aᵢ on
[0, L − 2ℓᵢ − gᵢ], so the distance ℓᵢ + gᵢ between the two copies varies: a head that attends a fixed number
of positions back cannot copy, only one that matches content (an induction head) can. With adjacent copies
(gᵢ = 0) the distance takes only ``max_span − min_span + 1`` values, and a head that spreads its attention
over those offsets copies partly (loss ≈ ln of their count) without matching content; a wide gap range
removes that shortcut.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import numpy as np

__all__ = ["RepeatedSpans", "repeated_spans"]


@dataclasses.dataclass(frozen=True, eq=False)
class RepeatedSpans:
    """The rows built by :func:`repeated_spans`.

    Attributes:
        tokens: ``int32 [n, L]``: the base rows with the spans written in.
        starts: ``int64 [n]``: aᵢ, where the first copy starts (−1 for a row without a span).
        lengths: ``int64 [n]``: ℓᵢ (0 for a row without a span).
        gaps: ``int64 [n]``: gᵢ, the tokens between the copies (the second starts at aᵢ + ℓᵢ + gᵢ; 0 for a
            row without a span).

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> spans = data.repeated_spans(np.zeros((2, 12), np.int32), min_span=3, max_span=3, vocab_size=50)
        >>> a = int(spans.starts[0])
        >>> bool((spans.tokens[0, a : a + 3] == spans.tokens[0, a + 3 : a + 6]).all())  # the span repeats
        True
        >>> spans.copy_mask().sum(1).tolist()  # targets a + ℓ + 1 ≤ t < a + 2ℓ: ℓ − 1 = 2 per row
        [2, 2]

    References:
        Olsson et al., *In-context Learning and Induction Heads*, Transformer Circuits Thread 2022.
    """

    tokens: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    gaps: np.ndarray | None = None

    def copy_mask(self) -> np.ndarray:
        """``bool [n, L]``: the targets that copying can predict, positions bᵢ + 1 ≤ t < bᵢ + ℓᵢ with
        bᵢ = aᵢ + ℓᵢ + gᵢ the second copy's start.

        These are the second-copy tokens whose predecessor is in the second copy too (the first token of
        the second copy cannot be known to start a repeat), the convention of
        :func:`unlearnx.eval.induction.copying_loss`."""
        gaps = np.zeros_like(self.lengths) if self.gaps is None else self.gaps
        offset = np.arange(self.tokens.shape[1])[None, :] - (self.starts + self.lengths + gaps)[:, None]
        has_span = (self.lengths > 0)[:, None]
        return has_span & (offset > 0) & (offset < self.lengths[:, None])


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def repeated_spans(
    base: np.ndarray,
    *,
    min_span: int,
    max_span: int,
    vocab_size: int,
    span_fraction: float = 1.0,
    max_gap: int = 0,
    source: np.ndarray | None = None,
    seed: int = 0,
) -> RepeatedSpans:
    """Writes a random token span followed by its repeat into rows of ``base``.

    ``round(span_fraction · n)`` of the n rows, chosen uniformly at random, each get one span: ℓ ~
    U{``min_span``..``max_span``} tokens drawn uniformly from [0, ``vocab_size``), placed at a start
    a ~ U{0..L − 2ℓ − g} and repeated after a gap g ~ U{0..min(``max_gap``, L − 2ℓ)}, so
    ``tokens[i, a:a+ℓ] == tokens[i, a+ℓ+g:a+2ℓ+g]``. Every other position keeps its base token. The result is
    a deterministic function of the inputs and ``seed``; with ``max_gap = 0`` (copies adjacent) the draws
    are the same as without the argument.

    Args:
        base: Integer tokens ``[n, L]`` (e.g. text chunks); not modified.
        min_span: Shortest span ℓ, ≥ 1.
        max_span: Longest span ℓ, with ``min_span ≤ max_span`` and ``2 · max_span ≤ L``.
        vocab_size: Span tokens are drawn from [0, vocab_size), ≥ 2.
        span_fraction: Share of the rows that get a span, in [0, 1].
        max_gap: Longest gap between the two copies, ≥ 0 (0: the repeat follows the span directly).
        source: Optional 1-D integer tokens (e.g. a text corpus): each span is then a chunk of ℓ consecutive
            source tokens at a uniformly random offset instead of uniform random tokens, so the span looks
            like its surroundings (``vocab_size`` is still checked but unused).
        seed: Seed of the draw (rows, lengths, starts and span tokens), a non-negative int.

    Returns:
        A :class:`RepeatedSpans` with ``int32`` tokens ``[n, L]``, the starts and lengths of the spans and
        :meth:`RepeatedSpans.copy_mask`, the second-copy targets.

    Raises:
        ValueError: Naming the argument: ``base`` not a 2-D integer array, a span length out of range or
            longer than half the row, ``vocab_size`` < 2, ``span_fraction`` outside [0, 1], a bad ``seed``.

    Examples:
        >>> import numpy as np
        >>> rows = repeated_spans(np.zeros((4, 16), np.int32), min_span=3, max_span=8, vocab_size=50)
        >>> a, n = int(rows.starts[0]), int(rows.lengths[0])
        >>> bool(np.all(rows.tokens[0, a : a + n] == rows.tokens[0, a + n : a + 2 * n]))
        True
    """
    base = np.asarray(base)
    if base.ndim != 2 or not np.issubdtype(base.dtype, np.integer):
        raise ValueError(f"base must be a 2-D integer array [n, L], got {base.dtype} {base.shape}")
    count, length = base.shape
    if length < 2:
        raise ValueError(f"base rows must hold at least 2 tokens, got L = {length}")
    min_span = _check_int("min_span", min_span, 1, length // 2)
    max_span = _check_int("max_span", max_span, min_span, length // 2)
    vocab_size = _check_int("vocab_size", vocab_size, 2, np.iinfo(np.int32).max)
    max_gap = _check_int("max_gap", max_gap, 0, length)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if not 0.0 <= float(span_fraction) <= 1.0:
        raise ValueError(f"span_fraction must lie in [0, 1], got {span_fraction}")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(count, bool)
    chosen[rng.permutation(count)[: int(round(float(span_fraction) * count))]] = True
    lengths = np.where(chosen, rng.integers(min_span, max_span + 1, count), 0)
    gaps = np.zeros(count, np.int64)
    if max_gap:
        widest = np.minimum(max_gap, length - 2 * lengths)
        gaps = np.where(chosen, np.floor(rng.random(count) * (widest + 1)), 0).astype(np.int64)
    room = length - 2 * lengths - gaps + 1
    starts = np.where(chosen, np.floor(rng.random(count) * room), -1).astype(np.int64)
    spans = rng.integers(0, vocab_size, (count, max_span))
    if source is not None:
        source = np.asarray(source)
        if source.ndim != 1 or not np.issubdtype(source.dtype, np.integer) or len(source) < max_span:
            raise ValueError(f"source must be 1-D integer tokens of length >= max_span, got {source.shape}")
        offsets = np.floor(rng.random(count) * (len(source) - max_span + 1)).astype(np.int64)
        spans = source[offsets[:, None] + np.arange(max_span)]
    position = np.arange(length)[None, :]
    first = position - starts[:, None]
    second = first - (lengths + gaps)[:, None]
    in_first = chosen[:, None] & (first >= 0) & (first < lengths[:, None])
    in_second = chosen[:, None] & (second >= 0) & (second < lengths[:, None])
    index = np.where(in_first, first, np.where(in_second, second, 0))
    spanned = np.take_along_axis(spans, index, axis=1)
    tokens = np.where(in_first | in_second, spanned, base).astype(np.int32)
    return RepeatedSpans(tokens=tokens, starts=starts, lengths=lengths.astype(np.int64), gaps=gaps)
