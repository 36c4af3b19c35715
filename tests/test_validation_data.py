"""Issue 14 (library side), classes 1 and 4: diverged models are never scored, and every loss or metric that
indexes by a label, token id or timestep validates the range (eagerly when concrete)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import continual, diffusion, eval, fisher
from unlearnx.eval import induction, restor
from unlearnx.models import Model
from unlearnx.unlearn import _baselines as baselines
from unlearnx.unlearn import objectives as obj

LOGITS = np.asarray([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]], np.float32)


# -- class 1: non-finite logits are reported, not scored ----------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_accuracy_of_non_finite_logits_is_nan_not_class_zero(bad):
    logits = LOGITS.copy()
    logits[1, 2] = bad
    assert np.isnan(eval.accuracy(logits, np.asarray([0, 0])))
    assert np.isnan(eval.accuracy(np.full((4, 3), np.nan), np.zeros(4, int)))  # was 1.0: argmax(NaN) = 0
    assert eval.accuracy(LOGITS, np.asarray([0, 1])) == 1.0


def test_per_row_scores_are_nan_exactly_on_non_finite_rows():
    logits = LOGITS.copy()
    logits[1, 0] = np.nan
    entropy, cross = eval.entropy(logits), eval.cross_entropy(logits, np.asarray([0, 1]))
    assert np.isfinite(entropy[0]) and np.isnan(entropy[1])
    assert np.isfinite(cross[0]) and np.isnan(cross[1])
    np.testing.assert_array_equal(entropy[0], eval.entropy(LOGITS)[0])  # finite rows unchanged


def test_continual_metrics_of_a_diverged_phase_are_nan():
    matrix = np.asarray([[0.9, 0.1], [np.nan, 0.8]])
    got = continual.cl_metrics(matrix, np.asarray([0.1, 0.1]))
    assert np.isnan(got["acc"]) and np.isnan(got["bwt"])
    with pytest.raises(ValueError, match="accuracy_matrix must hold accuracies in \\[0, 1\\].*found 90.0"):
        continual.cl_metrics(np.asarray([[90.0, 0.1], [0.5, 0.8]]), np.asarray([0.1, 0.1]))


def test_kv_output_change_of_a_diverged_edit_is_nan():
    original = {"attn2": {"to_k": {"kernel": np.ones((3, 2), np.float32)}}}
    edited = {"attn2": {"to_k": {"kernel": np.full((3, 2), np.nan, np.float32)}}}
    assert np.isnan(eval.kv_output_change(original, edited, np.ones((4, 3))))


# -- class 4: label, token and timestep ranges --------------------------------------------------------------


@pytest.mark.parametrize("label,shown", [(-1, "-1 at index 1"), (3, "3 at index 1")])
def test_classification_labels_in_range(label, shown):
    labels = np.asarray([0, label])
    for metric in (eval.accuracy, eval.cross_entropy):
        with pytest.raises(ValueError, match=f"labels must be class labels in \\[0, 3\\), found {shown}"):
            metric(LOGITS, labels)
    with pytest.raises(TypeError, match="labels must hold integer class labels, got dtype float"):
        eval.accuracy(LOGITS, np.asarray([0.0, 1.0]))


def test_token_ids_in_range_for_lm_losses_and_scores():
    logits = jnp.zeros((1, 4, 5))
    with pytest.raises(ValueError, match="targets must be token ids in \\[0, 5\\), found 7"):
        obj.token_log_probs(logits, jnp.asarray([[1, 7, 2, 0]]))
    with pytest.raises(ValueError, match="targets must be token ids in \\[0, 5\\), found -1"):
        obj.next_token_log_probs(logits, jnp.asarray([[1, 2, -1, 0]]))
    tokens = jnp.asarray([[1, 2, 1, 2]])
    with pytest.raises(ValueError, match="tokens must be token ids in \\[0, 2\\), found 2"):
        induction.copying_loss(jnp.zeros((1, 4, 2)), tokens)
    with pytest.raises(ValueError, match="tokens must be token ids in \\[0, 2\\), found 2"):
        induction.icl_score(jnp.zeros((1, 4, 2)), tokens, late=3, early=1)
    with pytest.raises(TypeError, match="late must be an integer, got 3.0"):
        induction.icl_score(jnp.zeros((1, 4, 5)), tokens, late=3.0, early=1)


def test_restor_scores_reject_ids_beyond_the_vocabulary():
    table = jnp.zeros((4, 4))
    model = Model(
        init=lambda rng: {"params": {}},
        apply=lambda v, tokens, train=False, rng=None: table[tokens],
        name="bigram",
    )
    with pytest.raises(ValueError, match="1 token ids are beyond the model's vocabulary"):
        restor.candidate_scores(model, {"params": {}}, [[1, 2]], [[[9]]])
    with pytest.raises(ValueError, match="token ids must be >= 0, found -3"):
        restor.mean_token_nll(model, {"params": {}}, {"x": np.asarray([[1, -3, 2]])})
    with pytest.raises(ValueError, match="acc_clean must be a finite number in \\[0, 1\\], got 1.5"):
        restor.recovery(0.5, 0.1, 1.5)


def test_fisher_sampled_labels_need_class_logits():
    loss = fisher.sampled_label_loss(lambda p, b: b["x"] * p["w"], jax.random.key(0))
    with pytest.raises(ValueError, match="logits_fn must return \\[B, C\\] logits, got \\(2,\\)"):
        fisher.diagonal(loss, {"w": jnp.ones(())}, [{"x": jnp.ones(2)}])


def test_relabelling_and_diffusion_indices_in_range():
    with pytest.raises(ValueError, match="labels must be class labels in \\[0, 3\\), found 3 at index 0"):
        baselines.random_wrong_labels(np.asarray([3, 1]), 3, seed=0)
    with pytest.raises(TypeError, match="num_classes must be an integer, got 3.0"):
        baselines.random_wrong_labels(np.asarray([0, 1]), 3.0, seed=0)
    with pytest.raises(ValueError, match="forget must be a dict of arrays with labels 'y'"):
        baselines.ascent_mixture({"x": np.zeros(2), "y": np.zeros(2)}, {"x": np.zeros(2)})
    schedule = diffusion.linear_schedule(10)
    with pytest.raises(ValueError, match="t must be timesteps in \\[0, 10\\), found 10 at index 1"):
        diffusion.q_sample(schedule, jnp.zeros((2, 3)), jnp.asarray([0, 10]), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="predicted must hold class labels >= 0, found -1"):
        eval.erased_rate(np.asarray([0, -1]), 0)
