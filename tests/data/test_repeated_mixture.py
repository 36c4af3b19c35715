"""The repeated-data mixture: exact token accounting (hypothesis), spread, determinism, Grain and errors."""

from __future__ import annotations

import collections

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnx.data import RepeatedMixture, repeated_mixture


def _stream(n: int) -> np.ndarray:
    """Tokens whose every position is distinct, so a sequence's content names its chunk."""
    return np.arange(n, dtype=np.int64)


@st.composite
def mixtures(draw):
    seq_len = draw(st.integers(1, 9))
    slots = draw(st.integers(1, 400))
    epochs = draw(st.integers(1, slots))
    fraction = draw(st.floats(0.0, 0.95, allow_subnormal=False))
    ideal = fraction * slots / epochs
    if fraction > 0 and np.floor(ideal + 0.5) == 0:  # too few repeats for one sequence: see the error test
        fraction = 0.0
    spare = draw(st.integers(0, 50))
    seed = draw(st.integers(0, 2**31))
    return seq_len, slots, epochs, fraction, spare, seed


@settings(max_examples=120, deadline=None)
@given(mixtures())
def test_token_accounting_is_exact(case):
    seq_len, slots, epochs, fraction, spare, seed = case
    m = min(int(np.floor(fraction * slots / epochs + 0.5)), slots // epochs)  # the documented rounding
    tokens = _stream((slots - m * epochs + m + spare) * seq_len)
    mix = repeated_mixture(
        tokens,
        budget=slots * seq_len,
        repeated_fraction=fraction,
        repeat_epochs=epochs,
        seq_len=seq_len,
        seed=seed,
    )
    stream = mix[np.arange(len(mix))]
    assert stream.shape == (slots, seq_len) and stream.size == slots * seq_len == mix.budget
    # every sequence is an aligned chunk of the stream
    assert np.all(stream % seq_len == np.arange(seq_len)) and np.all(np.diff(stream, axis=1) == 1)
    counts = collections.Counter(int(row[0]) for row in stream)
    repeated_starts = {int(row[0]) for row in mix.repeated_set()}
    assert len(repeated_starts) == m == mix.num_repeated_sequences
    for start, count in counts.items():
        assert count == (epochs if start in repeated_starts else 1)
    if epochs > 1:
        assert {s for s, c in counts.items() if c > 1} == repeated_starts
    # the repeated share is m·E whole sequences, as close to f as whole sequences allow
    assert int(mix.is_repeated.sum()) == m * epochs
    assert mix.repeated_fraction == pytest.approx(m * epochs / slots)
    assert abs(m * epochs - fraction * slots) <= epochs / 2 + 1e-9 or m == slots // epochs
    # unique tokens never repeat: each token of the unique slots occurs exactly once in the whole stream
    unique_tokens = stream[~mix.is_repeated].ravel()
    occurrences = collections.Counter(stream.ravel().tolist())
    assert all(occurrences[t] == 1 for t in unique_tokens.tolist())
    # the repeated subset is disjoint from the unique stream
    assert not set(stream[mix.is_repeated].ravel().tolist()) & set(unique_tokens.tolist())
    # repeats spread throughout: each decile holds its share of repeat slots up to ±2
    repeat_slots = m * epochs
    for decile in range(10):
        lo, hi = decile * slots // 10, (decile + 1) * slots // 10
        expected = repeat_slots * (hi - lo) / slots
        assert abs(int(mix.is_repeated[lo:hi].sum()) - expected) <= 2
    if repeat_slots >= 40:
        assert all(mix.is_repeated[d * slots // 10 : (d + 1) * slots // 10].any() for d in range(10))


@pytest.mark.parametrize(("fraction", "epochs"), [(0.0, 1), (0.0, 7), (0.3, 1), (0.5, 1)])
def test_zero_fraction_or_one_epoch_is_all_unique(fraction, epochs):
    mix = repeated_mixture(
        _stream(4000), budget=2000, repeated_fraction=fraction, repeat_epochs=epochs, seq_len=10, seed=3
    )
    starts = mix[:][:, 0]
    assert len(set(starts.tolist())) == len(mix) == 200


def test_deterministic_in_seed_and_independent_of_token_values():
    kwargs = dict(budget=640, repeated_fraction=0.1, repeat_epochs=4, seq_len=8)
    a = repeated_mixture(_stream(2000), seed=1, **kwargs)
    b = repeated_mixture(_stream(2000) * 3, seed=1, **kwargs)
    c = repeated_mixture(_stream(2000), seed=2, **kwargs)
    np.testing.assert_array_equal(a.chunks, b.chunks)
    np.testing.assert_array_equal(a[:] * 3, b[:])
    assert not np.array_equal(a.chunks, c.chunks)


def test_realistic_headline_case_and_indexing():
    # paper headline shape: f = 10% of the budget from a subset repeated 100 times
    mix = repeated_mixture(
        _stream(300_000), budget=256_000, repeated_fraction=0.1, repeat_epochs=100, seq_len=64, seed=0
    )
    assert len(mix) == 4000 and mix.num_repeated_sequences == 4 and mix.repeated_fraction == 0.1
    assert isinstance(mix, RepeatedMixture)
    np.testing.assert_array_equal(mix[-1], mix[len(mix) - 1])
    np.testing.assert_array_equal(mix[np.array([0, 5])], np.stack([mix[0], mix[5]]))
    dataset = mix.as_grain()
    assert isinstance(dataset, grain.MapDataset) and len(dataset) == len(mix)
    np.testing.assert_array_equal(dataset[17], mix[17])
    with pytest.raises(IndexError, match="out of range"):
        mix[4000]
    with pytest.raises(TypeError, match="index"):
        mix[1.5]


GOOD = dict(budget=1000, repeated_fraction=0.1, repeat_epochs=2, seq_len=10, seed=0)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"repeated_fraction": 1.0}, ValueError, r"repeated_fraction must lie in \[0, 1\), got 1.0"),
        ({"repeated_fraction": -0.1}, ValueError, r"repeated_fraction must lie in \[0, 1\), got -0.1"),
        ({"repeated_fraction": float("nan")}, ValueError, "repeated_fraction"),
        ({"repeated_fraction": "0.1"}, TypeError, "repeated_fraction"),
        ({"repeat_epochs": 101}, ValueError, "repeat_epochs 101 exceeds.*only 100 sequences"),
        ({"repeat_epochs": 30}, ValueError, "U = f·D/E.*3.3 tokens rounds to zero sequences.*seq_len 10"),
        ({"repeat_epochs": 0}, ValueError, "repeat_epochs must be >= 1, got 0"),
        ({"repeat_epochs": 2.0}, TypeError, "repeat_epochs must be an int"),
        ({"seq_len": 0}, ValueError, "seq_len must be >= 1"),
        ({"budget": 1005}, ValueError, "budget 1005 is not a multiple of seq_len 10"),
        ({"budget": 4000}, ValueError, "not enough unique tokens.*needs 380 distinct sequences.*has 2000"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int"),
    ],
)
def test_bad_input_is_rejected_with_the_argument_and_value(changes, error, match):
    with pytest.raises(error, match=match):
        repeated_mixture(_stream(2000), **{**GOOD, **changes})


def test_bad_token_stream():
    with pytest.raises(TypeError, match="1-D integer"):
        repeated_mixture(np.zeros((4, 4), int), **GOOD)
    with pytest.raises(TypeError, match="1-D integer"):
        repeated_mixture(np.zeros(2000), **GOOD)


@pytest.mark.parametrize(
    ("slots", "fraction", "epochs", "expected"),
    # m = round(f·S/E) by hand: 0.1·100/2 = 5; 0.1·4000/100 = 4; 0.3·64/10 = 1.92 → 2; 0.05·64/4 = 0.8 → 1
    [(100, 0.1, 2, 5), (4000, 0.1, 100, 4), (64, 0.3, 10, 2), (64, 0.05, 4, 1)],
)
def test_repeated_sequence_counts_worked_by_hand(slots, fraction, epochs, expected):
    seq_len = 4
    unique = np.arange(slots * seq_len, dtype=np.int32)
    mixture = repeated_mixture(
        unique,
        budget=slots * seq_len,
        repeated_fraction=fraction,
        repeat_epochs=epochs,
        seq_len=seq_len,
        seed=0,
    )
    assert mixture.num_repeated_sequences == expected
    assert len(mixture) == slots
