"""A fixed token budget in which a small subset of sequences is repeated many times (Hernandez et al. 2022).

Notation (``shared/papers/repeated_data.md``): token budget D, sequence length L, repeated fraction f and
repeat epochs E. The budget holds S = D / L sequence slots. The repeated subset has

    m = min(round(f·S / E), ⌊S / E⌋) sequences,  U = m·L tokens,

each filling exactly E slots, so R = m·E slots (a realised fraction R / S ≈ f, rounded to whole
sequences) are repeats; the other S − R slots are distinct sequences of the unique stream, each used once.
Every sequence is a non-overlapping chunk ``tokens[c·L:(c + 1)·L]`` of ``unique_tokens``, chunks being
drawn without replacement from a seeded permutation, so the repeated subset is disjoint from the unique
stream and no unique token is ever seen twice.

The repeats are shuffled throughout training with stratified placement: slot positions are split into R
equal strata and one repeat lands uniformly at random inside each, so every stretch of training carries
its share of repeats (any window of w slots holds w·R/S ± 2 of them), and which repeated sequence fills
each repeat slot is a uniformly random permutation of the multiset {each of the m sequences × E}.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RepeatedMixture", "repeat_count", "repeated_mixture"]


@dataclasses.dataclass(frozen=True, eq=False)
class RepeatedMixture(Sequence):
    """A deterministic, random-access stream of training sequences (see :func:`repeated_mixture`).

    Indexing with an int returns one ``[seq_len]`` sequence, with a slice or an integer array a
    ``[k, seq_len]`` batch; ``len()`` is the number of slots S. Wrap it in Grain with :meth:`as_grain`.

    Attributes:
        tokens: The read-only token stream the sequences are cut from.
        seq_len: L, tokens per sequence.
        chunks: ``int64 [S]``: slot i holds chunk ``chunks[i]``, i.e. ``tokens[chunks[i]·L:(chunks[i]+1)·L]``.
        is_repeated: ``bool [S]``: whether slot i holds a repeated-subset sequence.
        repeated_chunks: ``int64 [m]``: the chunks of the repeated subset.
        repeat_epochs: E, how often each repeated-subset sequence occurs.
        requested_fraction: The f that was asked for (the realised one is :attr:`repeated_fraction`).

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> stream = data.repeated_mixture(
        ...     np.arange(1000), budget=400, repeated_fraction=0.5, repeat_epochs=4, seq_len=10, seed=0
        ... )
        >>> len(stream), stream.repeated_fraction, len(stream.repeated_chunks), stream[0].shape
        (40, 0.5, 5, (10,))

    References:
        Hernandez et al., *Scaling Laws and Interpretability of Learning from Repeated Data*, 2022.
    """

    tokens: np.ndarray
    seq_len: int
    chunks: np.ndarray
    is_repeated: np.ndarray
    repeated_chunks: np.ndarray
    repeat_epochs: int
    requested_fraction: float

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def budget(self) -> int:
        """D, tokens in the stream (= S·L)."""
        return len(self.chunks) * self.seq_len

    @property
    def repeated_fraction(self) -> float:
        """The realised repeated fraction R / S."""
        return float(self.is_repeated.sum()) / max(len(self.chunks), 1)

    @property
    def num_repeated_sequences(self) -> int:
        """m, distinct sequences in the repeated subset."""
        return len(self.repeated_chunks)

    def _chunk_tokens(self, chunks: np.ndarray) -> np.ndarray:
        starts = np.asarray(chunks, np.int64)[..., None] * self.seq_len
        return self.tokens[starts + np.arange(self.seq_len)]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            return self._chunk_tokens(self.chunks[index])
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            position = operator.index(index)
            if not -len(self) <= position < len(self):
                raise IndexError(f"slot {position} out of range for a stream of {len(self)} sequences")
            return self._chunk_tokens(self.chunks[position])
        positions = np.asarray(index)
        if positions.dtype == np.bool_ or not np.issubdtype(positions.dtype, np.integer):
            raise TypeError(f"index must be an int, a slice or an integer array, got {index!r}")
        if positions.size and (positions.max() >= len(self) or positions.min() < -len(self)):
            raise IndexError(f"slots out of range for a stream of {len(self)} sequences")
        return self._chunk_tokens(self.chunks[positions])

    def repeated_set(self) -> np.ndarray:
        """The m distinct repeated-subset sequences, ``[m, seq_len]``."""
        return self._chunk_tokens(self.repeated_chunks)

    def as_grain(self):
        """This stream as a ``grain.MapDataset`` (items are ``[seq_len]`` arrays)."""
        import grain

        return grain.MapDataset.source(self)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def repeat_count(slots: int, repeated_fraction: float, repeat_epochs: int, *, seq_len: int = 1) -> int:
    """m = min(round(f·S / E), ⌊S / E⌋): distinct repeated units (sequences, rows) among S slots.

    Args:
        slots: S, the budget in units.
        repeated_fraction: f in [0, 1) (not re-validated here).
        repeat_epochs: E >= 1.
        seq_len: Tokens per unit, only for the error messages.

    Raises:
        ValueError: If E > S (more repeat epochs than the budget allows), or f > 0 but the repeated
            subset U = f·S·L / E tokens rounds to zero sequences (U < L/2, L the repeat span).
    """
    if repeat_epochs > slots:
        raise ValueError(
            f"repeat_epochs {repeat_epochs} exceeds what the budget allows: {slots * seq_len} tokens hold "
            f"only {slots} sequences of {seq_len}"
        )
    count = min(math.floor(repeated_fraction * slots / repeat_epochs + 0.5), slots // repeat_epochs)
    if repeated_fraction > 0 and count == 0:
        span = repeated_fraction * slots * seq_len / repeat_epochs
        raise ValueError(
            f"the repeated subset U = f·D/E = {repeated_fraction:g}·{slots * seq_len}/{repeat_epochs} = "
            f"{span:.1f} tokens rounds to zero sequences of seq_len {seq_len} (the repeat span); lower "
            "repeat_epochs, raise repeated_fraction or budget, or shorten seq_len"
        )
    return count


def _checked_arguments(unique_tokens, budget, repeated_fraction, repeat_epochs, seq_len, seed) -> tuple:
    """:func:`repeated_mixture`'s validated ``(read-only tokens, seq_len, budget, epochs, fraction)``."""
    tokens = np.asarray(unique_tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"unique_tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if tokens.flags.writeable:
        tokens = tokens.view()
        tokens.setflags(write=False)
    seq_len = _positive_int(seq_len, "seq_len")
    budget = _positive_int(budget, "budget")
    epochs = _positive_int(repeat_epochs, "repeat_epochs")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(repeated_fraction, bool) or not isinstance(repeated_fraction, int | float | np.floating):
        raise TypeError(f"repeated_fraction must be a float, got {repeated_fraction!r}")
    fraction = float(repeated_fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"repeated_fraction must lie in [0, 1), got {repeated_fraction!r}")
    if budget % seq_len:
        raise ValueError(f"budget {budget} is not a multiple of seq_len {seq_len}")
    return tokens, seq_len, budget, epochs, fraction


def repeated_mixture(
    unique_tokens: npt.ArrayLike,
    *,
    budget: int,
    repeated_fraction: float,
    repeat_epochs: int,
    seq_len: int,
    seed: int,
) -> RepeatedMixture:
    """Builds the training stream: ``budget`` tokens, a share f of them repeats of a small subset.

    With S = D / L slots, m = min(round(f·S / E), ⌊S / E⌋) repeated sequences fill R = m·E slots (each
    exactly E times), and S − R distinct sequences of the unique stream fill the rest once; the stream needs
    (S − R + m)·L tokens of ``unique_tokens``. f = 0 or E = 1 give an all-unique stream. The result
    is a pure function of its arguments (and the length, not the content, of ``unique_tokens``).

    Args:
        unique_tokens: 1-D integer token stream, e.g. the training split of a corpus. Not copied.
        budget: D, total tokens; a multiple of ``seq_len``.
        repeated_fraction: f in [0, 1).
        repeat_epochs: E >= 1, occurrences of each repeated sequence.
        seq_len: L, tokens per sequence.
        seed: Non-negative seed of the chunk choice and the placement.

    Returns:
        A :class:`RepeatedMixture` of S sequences.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If f is outside [0, 1); the budget is not a positive multiple of ``seq_len``; E
            exceeds the S sequences the budget holds; the repeated subset U = f·D / E tokens rounds to zero
            sequences (U < seq_len/2; the repeat span is one sequence); or ``unique_tokens`` is too short.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> mix = data.repeated_mixture(np.arange(400), budget=200, repeated_fraction=0.2, repeat_epochs=4,
        ...                             seq_len=10, seed=0)
        >>> len(mix.chunks), int(mix.is_repeated.sum()), len(mix.repeated_chunks)
        (20, 4, 1)
    """
    tokens, seq_len, budget, epochs, fraction = _checked_arguments(
        unique_tokens, budget, repeated_fraction, repeat_epochs, seq_len, seed
    )
    slots = budget // seq_len
    num_repeated = repeat_count(slots, fraction, epochs, seq_len=seq_len)
    repeat_slots = num_repeated * epochs
    needed_chunks = slots - repeat_slots + num_repeated
    available = len(tokens) // seq_len
    if needed_chunks > available:
        raise ValueError(
            f"not enough unique tokens: the stream needs {needed_chunks} distinct sequences of {seq_len} "
            f"({needed_chunks * seq_len} tokens), unique_tokens has {len(tokens)} ({available} sequences)"
        )

    rng = np.random.default_rng((int(seed), 0x5E9))
    order = rng.permutation(available)[:needed_chunks].astype(np.int64)
    repeated_chunks, unique_chunks = order[:num_repeated], order[num_repeated:]
    is_repeated = np.zeros(slots, bool)
    if repeat_slots:
        strata = np.arange(repeat_slots + 1, dtype=np.int64) * slots // repeat_slots
        widths = np.diff(strata)
        positions = strata[:-1] + np.floor(rng.random(repeat_slots) * widths).astype(np.int64)
        is_repeated[positions] = True
    chunks = np.empty(slots, np.int64)
    chunks[is_repeated] = rng.permutation(np.repeat(repeated_chunks, epochs))
    chunks[~is_repeated] = unique_chunks
    for array in (chunks, is_repeated, repeated_chunks):
        array.setflags(write=False)
    return RepeatedMixture(
        tokens=tokens,
        seq_len=seq_len,
        chunks=chunks,
        is_repeated=is_repeated,
        repeated_chunks=repeated_chunks,
        repeat_epochs=epochs,
        requested_fraction=fraction,
    )
