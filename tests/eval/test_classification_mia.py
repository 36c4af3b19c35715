"""unlearnx.eval: entropies and cross-entropies against float64 NumPy, MIAs on constructed cases."""

import numpy as np
import pytest

from unlearnx import eval


def _softmax64(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def test_entropy_and_cross_entropy_match_float64():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 3
    labels = rng.integers(0, 7, 50)
    p = _softmax64(logits)
    np.testing.assert_allclose(eval.entropy(logits), -(p * np.log(p)).sum(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        eval.cross_entropy(logits, labels), -np.log(p[np.arange(50), labels]), rtol=1e-5
    )
    np.testing.assert_allclose(eval.entropy(np.zeros((1, 4))), [np.log(4)], rtol=1e-6)
    np.testing.assert_allclose(eval.entropy(np.asarray([[0.0, -1e9]])), [0.0], atol=1e-6)  # 0 log 0 = 0


def test_accuracy_by_hand_and_errors():
    assert eval.accuracy(np.asarray([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]), np.asarray([0, 0, 0])) == 2 / 3
    assert np.isnan(eval.accuracy(np.zeros((0, 3)), np.zeros(0, int)))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
        eval.accuracy(np.zeros((3, 2)), np.zeros(2, int))
    with pytest.raises(ValueError, match=r"logits must have shape \[N, C\]"):
        eval.entropy(np.zeros(3))


def test_entropy_mia_separable_cases():
    rng = np.random.default_rng(1)
    members = rng.uniform(0.0, 0.1, 200)  # confident on training data
    nonmembers = rng.uniform(1.0, 2.0, 200)
    assert eval.entropy_mia(members, nonmembers, rng.uniform(0.0, 0.1, 50)) == 1.0
    assert eval.entropy_mia(members, nonmembers, rng.uniform(1.0, 2.0, 50)) == 0.0


def test_loss_mia_chance_and_separable():
    rng = np.random.default_rng(2)
    same = eval.loss_mia(rng.exponential(size=300), rng.exponential(size=500))
    assert 0.4 < same < 0.6
    assert eval.loss_mia(rng.uniform(0, 0.1, 100), rng.uniform(1, 2, 100)) == 1.0
    with pytest.raises(ValueError, match="at least 5 examples"):
        eval.loss_mia([0.1, 0.2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        eval.entropy_mia([np.nan], [1.0], [1.0])
