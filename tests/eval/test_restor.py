"""RESTOR metrics on hand-built counts, and candidate scoring against a bigram model computed in NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx.eval import restor
from unlearnx.models import Model


def test_accuracy_on_hand_counts():
    # 3 of 5 facts answered correctly; target -1 (no corrupted value) never matches.
    assert restor.accuracy([1, 2, 3, 4, 5], [1, 2, 3, 0, 0]) == pytest.approx(0.6)
    assert restor.accuracy([1, 2], [-1, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        restor.accuracy([], [])
    with pytest.raises(ValueError, match="shapes"):
        restor.accuracy([1, 2], [1])


def test_recovery_and_forgetting_on_hand_counts():
    # 100 target facts: clean model right on 90, corrupted on 10, unlearned on 50 -> R = 40/80.
    assert restor.recovery(0.50, 0.10, 0.90) == pytest.approx(0.5)
    assert restor.recovery(0.90, 0.10, 0.90) == pytest.approx(1.0)
    assert restor.recovery(0.05, 0.10, 0.90) == pytest.approx(-0.0625)
    # corrupted answers: 80 under θ_c, 20 after unlearning -> F = 1 - 20/80.
    assert restor.forgetting(0.20, 0.80) == pytest.approx(0.75)
    assert restor.forgetting(0.0, 0.80) == pytest.approx(1.0)
    assert restor.forgetting(0.9, 0.60) == pytest.approx(-0.5)


def test_zero_denominators_raise_not_nan():
    with pytest.raises(ValueError, match="Acc_clean"):
        restor.recovery(0.5, 0.4, 0.4)
    with pytest.raises(ValueError, match="Rate_corrupted"):
        restor.forgetting(0.1, 0.0)
    with pytest.raises(ValueError, match="acc_unlearned"):
        restor.recovery(float("nan"), 0.1, 0.9)
    with pytest.raises(ValueError, match="rate_unlearned"):
        restor.forgetting(1.5, 0.5)


def test_logit_probe_on_hand_values():
    scores = np.array([[-2.0, -6.0, -1.0], [-3.0, -0.5, -4.0]])
    lengths = np.array([[1, 2, 1], [1, 1, 2]])
    probe = restor.logit_probe(scores, lengths, correct=[0, 1], corrupted=[1, 0], random=[2, 2])
    assert probe["correct"] == pytest.approx((-2.0 + -0.5) / 2)
    assert probe["corrupted"] == pytest.approx((-3.0 + -3.0) / 2)
    assert probe["random"] == pytest.approx((-1.0 + -2.0) / 2)
    with pytest.raises(ValueError, match="random"):
        restor.logit_probe(scores, lengths, correct=[0, 1], corrupted=[1, 0], random=[3, 0])


def bigram_model(table):
    """A causal LM whose logits at position t are ``table[token_t]`` (so P(x_{t+1} | x_≤t) is a bigram)."""
    table = jnp.asarray(table, jnp.float32)

    def apply(variables, tokens, *, train=False, rng=None):
        return variables["params"]["scale"] * table[tokens]

    return Model(init=lambda rng: {"params": {"scale": jnp.ones(())}}, apply=apply, name="bigram")


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_candidate_scores_match_a_bigram_by_hand():
    table = np.random.default_rng(0).normal(size=(6, 6)) * 2
    logp = log_softmax(table)  # logp[a, b] = log P(b | a)
    model = bigram_model(table)
    variables = model.init(None)
    prompts = [[1, 2], [3]]
    candidates = [[[4], [5, 0]], [[2, 2], [4], [5]]]
    scores, lengths = restor.candidate_scores(model, variables, prompts, candidates, batch_size=2)
    expected = np.array(
        [
            [logp[2, 4], logp[2, 5] + logp[5, 0], -np.inf],
            [logp[3, 2] + logp[2, 2], logp[3, 4], logp[3, 5]],
        ]
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_array_equal(lengths, [[1, 2, 0], [2, 1, 1]])
    padded, _ = restor.candidate_scores(model, variables, prompts, candidates, batch_size=4, length=7)
    np.testing.assert_allclose(padded, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="shorter"):
        restor.candidate_scores(model, variables, prompts, candidates, length=2)
    with pytest.raises(ValueError, match="empty"):
        restor.candidate_scores(model, variables, [[1]], [[[]]])


def test_perplexity_matches_a_bigram_by_hand():
    table = np.random.default_rng(1).normal(size=(5, 5))
    logp = log_softmax(table)
    model = bigram_model(table)
    x = np.array([[1, 2, 3, 0], [4, 4, 0, 0], [2, 1, 1, 3]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    nll = -(logp[1, 2] + logp[2, 3] + logp[4, 4] + logp[2, 1] + logp[1, 1] + logp[1, 3]) / 6
    got = restor.perplexity(model, model.init(None), {"x": x, "mask": mask}, batch_size=2)
    assert got == pytest.approx(np.exp(nll), rel=1e-5)
    with pytest.raises(ValueError, match="no target"):
        restor.mean_token_nll(model, model.init(None), {"x": x, "mask": np.zeros_like(mask)})
