"""``unlearnx.data._repeated_spans``: a random span followed by its repeat, written into base rows."""

import numpy as np
import pytest

from unlearnx.data import RepeatedSpans, repeated_spans


def _base(count=200, length=32, seed=0):
    return np.random.default_rng(seed).integers(1000, 1100, (count, length)).astype(np.int64)


def test_each_span_is_followed_by_an_identical_copy_and_the_rest_is_the_base():
    base = _base()
    rows = repeated_spans(base, min_span=2, max_span=16, vocab_size=50, seed=3)
    assert rows.tokens.shape == base.shape and rows.tokens.dtype == np.int32
    assert rows.starts.dtype == np.int64 and rows.lengths.dtype == np.int64
    for i in range(len(base)):
        a, n = int(rows.starts[i]), int(rows.lengths[i])
        assert 2 <= n <= 16 and 0 <= a <= base.shape[1] - 2 * n
        np.testing.assert_array_equal(rows.tokens[i, a : a + n], rows.tokens[i, a + n : a + 2 * n])
        assert np.all(rows.tokens[i, a : a + n] < 50)  # span tokens come from [0, vocab_size)
        outside = np.ones(base.shape[1], bool)
        outside[a : a + 2 * n] = False
        np.testing.assert_array_equal(rows.tokens[i, outside], base[i, outside])  # base ids are >= 1000


def test_lengths_and_starts_cover_their_whole_ranges_and_span_tokens_are_uniform():
    rows = repeated_spans(_base(4000), min_span=3, max_span=6, vocab_size=4, seed=0)
    assert set(rows.lengths.tolist()) == {3, 4, 5, 6}
    ends = rows.starts + 2 * rows.lengths
    assert rows.starts.min() == 0 and ends.max() == 32  # both extreme placements occur
    span_tokens = np.concatenate([rows.tokens[i, a : a + n] for i, (a, n) in
                                  enumerate(zip(rows.starts, rows.lengths, strict=True))])  # fmt: skip
    frequencies = np.bincount(span_tokens, minlength=4) / len(span_tokens)
    np.testing.assert_allclose(frequencies, 0.25, atol=0.02)  # ~18k draws: 5 standard errors


def test_deterministic_from_the_seed_and_the_base_is_not_modified():
    base = _base()
    kept = base.copy()
    first = repeated_spans(base, min_span=2, max_span=8, vocab_size=50, seed=7)
    second = repeated_spans(base, min_span=2, max_span=8, vocab_size=50, seed=7)
    other = repeated_spans(base, min_span=2, max_span=8, vocab_size=50, seed=8)
    for field in ("tokens", "starts", "lengths"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert not np.array_equal(first.tokens, other.tokens)
    np.testing.assert_array_equal(base, kept)


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.25, 50), (0.333, 67), (1.0, 200)])
def test_span_fraction_picks_round_fraction_times_n_rows(fraction, expected):
    base = _base()
    rows = repeated_spans(base, min_span=2, max_span=8, vocab_size=50, span_fraction=fraction, seed=1)
    with_span = rows.lengths > 0
    assert with_span.sum() == expected
    assert np.all(rows.starts[~with_span] == -1)
    np.testing.assert_array_equal(rows.tokens[~with_span], base[~with_span])
    assert not rows.copy_mask()[~with_span].any()


def test_copy_mask_on_hand_built_rows():
    rows = RepeatedSpans(
        tokens=np.zeros((3, 10), np.int32), starts=np.array([2, 0, -1]), lengths=np.array([3, 5, 0])
    )
    expected = np.zeros((3, 10), bool)
    expected[0, [6, 7]] = True  # a + ℓ + 1 = 6 ≤ t < a + 2ℓ = 8
    expected[1, [6, 7, 8, 9]] = True  # 6 ≤ t < 10
    np.testing.assert_array_equal(rows.copy_mask(), expected)


def test_gapped_copies_hand_built_mask_and_every_gap_and_start_occurs():
    rows = RepeatedSpans(
        tokens=np.zeros((2, 12), np.int32), starts=np.array([1, 0]), lengths=np.array([3, 2]),
        gaps=np.array([4, 0]),
    )  # fmt: skip
    expected = np.zeros((2, 12), bool)
    expected[0, [9, 10]] = True  # second copy at b = 1 + 3 + 4 = 8: targets 9 ≤ t < 11
    expected[1, [3]] = True
    np.testing.assert_array_equal(rows.copy_mask(), expected)
    base = _base(4000)
    rows = repeated_spans(base, min_span=3, max_span=6, vocab_size=50, max_gap=30, seed=2)
    assert set(rows.gaps.tolist()) == set(range(0, 32 - 2 * 3 + 1))  # g ≤ min(max_gap, L − 2ℓ)
    assert np.all(rows.gaps <= 32 - 2 * rows.lengths) and rows.starts.min() == 0
    assert (rows.starts + 2 * rows.lengths + rows.gaps).max() == 32
    for i in range(len(base)):
        a, n, g = int(rows.starts[i]), int(rows.lengths[i]), int(rows.gaps[i])
        np.testing.assert_array_equal(rows.tokens[i, a : a + n], rows.tokens[i, a + n + g : a + 2 * n + g])
        outside = np.ones(base.shape[1], bool)
        outside[a : a + n] = outside[a + n + g : a + 2 * n + g] = False
        np.testing.assert_array_equal(rows.tokens[i, outside], base[i, outside])
    mask = rows.copy_mask()
    assert mask.sum() == np.sum(rows.lengths - 1)
    for i, t in zip(*np.nonzero(mask), strict=True):
        assert rows.tokens[i, t] == rows.tokens[i, t - rows.lengths[i] - rows.gaps[i]]
    # max_gap = 0 draws exactly what the call without it draws
    plain = repeated_spans(base, min_span=3, max_span=6, vocab_size=50, seed=2)
    again = repeated_spans(base, min_span=3, max_span=6, vocab_size=50, max_gap=0, seed=2)
    np.testing.assert_array_equal(plain.tokens, again.tokens)
    assert not plain.gaps.any()


def test_source_spans_are_chunks_of_the_source_and_the_other_draws_are_unchanged():
    base = _base(300)
    source = np.arange(5000, 5400)  # every chunk of it is consecutive integers
    rows = repeated_spans(base, min_span=3, max_span=8, vocab_size=50, max_gap=10, source=source, seed=4)
    plain = repeated_spans(base, min_span=3, max_span=8, vocab_size=50, max_gap=10, seed=4)
    for field in ("starts", "lengths", "gaps"):  # the same placements: only the span tokens differ
        np.testing.assert_array_equal(getattr(rows, field), getattr(plain, field))
    for i in range(len(base)):
        a, n, g = int(rows.starts[i]), int(rows.lengths[i]), int(rows.gaps[i])
        span = rows.tokens[i, a : a + n]
        assert span[0] >= 5000 and np.array_equal(span, span[0] + np.arange(n))  # a chunk of the source
        np.testing.assert_array_equal(span, rows.tokens[i, a + n + g : a + 2 * n + g])
    with pytest.raises(ValueError, match="source must be 1-D integer tokens"):
        repeated_spans(base, min_span=3, max_span=8, vocab_size=50, source=np.arange(5))
    with pytest.raises(ValueError, match="source must be 1-D integer tokens"):
        repeated_spans(base, min_span=3, max_span=8, vocab_size=50, source=np.zeros((2, 50), int))


def test_copy_mask_targets_are_predictable_from_the_first_copy():
    rows = repeated_spans(_base(300), min_span=2, max_span=16, vocab_size=50, seed=5)
    mask = rows.copy_mask()
    assert mask.sum() == np.sum(rows.lengths - 1)
    for i, t in zip(*np.nonzero(mask), strict=True):
        n = rows.lengths[i]
        assert rows.tokens[i, t] == rows.tokens[i, t - n]
        assert rows.tokens[i, t - 1] == rows.tokens[i, t - 1 - n]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": np.zeros(8, np.int32)}, "base must be a 2-D integer array"),
        ({"base": np.zeros((2, 8))}, "base must be a 2-D integer array"),
        ({"base": np.zeros((2, 1), np.int32)}, "at least 2 tokens"),
        ({"min_span": 0}, r"min_span must lie in \[1, 8\], got 0"),
        ({"min_span": 1.5}, "min_span must be an int"),
        ({"max_span": 9}, r"max_span must lie in \[2, 8\], got 9"),
        ({"max_span": 1}, r"max_span must lie in \[2, 8\], got 1"),
        ({"vocab_size": 1}, "vocab_size must lie in"),
        ({"span_fraction": 1.5}, r"span_fraction must lie in \[0, 1\], got 1.5"),
        ({"span_fraction": float("nan")}, "span_fraction must lie in"),
        ({"seed": -1}, "seed must lie in"),
        ({"max_gap": -1}, r"max_gap must lie in \[0, 16\], got -1"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(changes, message):
    kwargs = {"base": np.zeros((2, 16), np.int32), "min_span": 2, "max_span": 4, "vocab_size": 10} | changes
    with pytest.raises(ValueError, match=message):
        repeated_spans(**kwargs)
