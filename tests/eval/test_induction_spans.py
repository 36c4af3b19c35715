"""Copying loss on spans anywhere in a row and the prefix-matching chance level, against hand-built
attention maps, hand-computed numbers and NumPy float64 references."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from unlearnx.data import repeated_spans
from unlearnx.eval import induction


def _nll64(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """float64 −log p(x_t | x_<t), [B, T − 1] (target t at column t − 1)."""
    logits = logits.astype(np.float64)[:, :-1]
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    return log_z - np.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]


def test_masked_copying_loss_pools_marked_targets_over_rows():
    rng = np.random.default_rng(0)
    rows = repeated_spans(rng.integers(0, 13, (6, 20)), min_span=2, max_span=9, vocab_size=13, seed=1)
    logits = rng.normal(size=(6, 20, 13)).astype(np.float32)
    mask = rows.copy_mask()
    nll = _nll64(logits, rows.tokens)
    expected = nll[mask[:, 1:]].sum() / mask.sum()  # every marked target once, rows weighed by their count
    got = jax.jit(induction.masked_copying_loss)(logits, rows.tokens, mask)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # only marked targets matter: unmarked logits can change freely
    changed = np.where(
        np.pad(mask[:, 1:], ((0, 0), (0, 1)))[..., None], logits, rng.normal(size=logits.shape)
    )
    assert float(
        induction.masked_copying_loss(changed.astype(np.float32), rows.tokens, mask)
    ) == pytest.approx(expected, rel=1e-5)


def test_masked_copying_loss_hand_computed_and_equal_to_copying_loss_on_whole_rows():
    # vocab 2, logits (0, log 3) at every position: p(1) = 3/4, p(0) = 1/4
    tokens = np.array([[0, 1, 0, 1, 0, 1]])
    logits = np.tile(np.array([0.0, np.log(3.0)], np.float32), (1, 6, 1))
    mask = np.array([[False, False, False, False, True, True]])  # targets 0 and 1
    expected = (np.log(4.0) + np.log(4.0 / 3.0)) / 2
    assert float(induction.masked_copying_loss(logits, tokens, mask)) == pytest.approx(expected, rel=1e-6)
    # rows that are a segment repeated twice, marked as copying_loss marks them: the same number
    rng = np.random.default_rng(2)
    segment = rng.integers(0, 7, (4, 5))
    rows = np.concatenate([segment, segment], axis=1)
    logits = rng.normal(size=(4, 10, 7)).astype(np.float32)
    marked = np.broadcast_to(np.arange(10) > 5, rows.shape)
    assert float(induction.masked_copying_loss(logits, rows, marked)) == pytest.approx(
        float(induction.copying_loss(logits, rows)), rel=1e-6
    )


def test_masked_copying_loss_errors_and_empty_mask():
    tokens = np.zeros((2, 6), np.int32)
    logits = np.zeros((2, 6, 4), np.float32)
    assert np.isnan(float(induction.masked_copying_loss(logits, tokens, np.zeros((2, 6), bool))))
    with pytest.raises(ValueError, match="mask"):
        induction.masked_copying_loss(logits, tokens, np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="position 0"):
        induction.masked_copying_loss(logits, tokens, np.eye(2, 6, dtype=bool))
    with pytest.raises(ValueError, match="logits"):
        induction.masked_copying_loss(logits[:, :5], tokens, np.zeros((2, 6), bool))


def test_chance_prefix_matching_is_uniform_attention_score():
    assert induction.chance_prefix_matching(4, 2) == pytest.approx((1 / 3 + 1 / 4) / 2)  # t = 2, 3
    length, period = 32, 16
    tokens = np.tile(np.random.default_rng(3).permutation(100)[:period], (2, 2))
    rows = np.arange(length)
    uniform = np.where(rows[None, :] <= rows[:, None], 1.0 / (rows[:, None] + 1.0), 0.0)
    attention = np.broadcast_to(uniform, (2, 1, 1, length, length))
    score = induction.prefix_matching_score(attention, tokens, period=period)
    assert float(score[0, 0]) == pytest.approx(induction.chance_prefix_matching(length, period), rel=1e-6)
    with pytest.raises(ValueError, match="period"):
        induction.chance_prefix_matching(8, 8)
