"""unlearnx.unlearn._baselines: the constructed training sets of the retraining baselines."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unlearnx import unlearn


@given(st.integers(2, 20), st.integers(0, 10_000))
def test_wrong_labels_never_keep_the_true_label(num_classes, seed):
    labels = np.arange(200) % num_classes
    wrong = unlearn.random_wrong_labels(labels, num_classes, seed)
    assert np.all(wrong != labels) and np.all((0 <= wrong) & (wrong < num_classes))


def test_wrong_labels_are_uniform_over_the_other_classes():
    wrong = unlearn.random_wrong_labels(np.zeros(30_000, int), 4, seed=0)
    np.testing.assert_allclose(np.bincount(wrong, minlength=4) / 30_000, [0, 1 / 3, 1 / 3, 1 / 3], atol=0.01)


def test_mixtures():
    retain = {"x": np.ones((3, 2)), "y": np.asarray([0, 1, 2])}
    forget = {"x": np.zeros((2, 2)), "y": np.asarray([3, 3])}
    ascent = unlearn.ascent_mixture(retain, forget, forget_weight=0.5)
    np.testing.assert_array_equal(ascent["weight"], [1, 1, 1, -0.5, -0.5])
    amnesiac = unlearn.relabel_mixture(retain, forget, num_classes=4, seed=0)
    np.testing.assert_array_equal(amnesiac["y"][:3], [0, 1, 2])
    assert np.all(amnesiac["y"][3:] != 3)
    with pytest.raises(ValueError, match="different fields"):
        unlearn.relabel_mixture(
            retain, {"x": forget["x"], "y": forget["y"], "w": forget["y"]}, num_classes=4, seed=0
        )


def test_bad_teacher_targets_are_tempered_softmaxes():
    competent = np.asarray([[2.0, 0.0]])
    incompetent = np.asarray([[0.0, 0.0], [1.0, -1.0]])
    out = unlearn.bad_teacher_set(np.ones((1, 3)), np.zeros((2, 3)), competent, incompetent, temperature=2.0)
    e = np.exp(1.0)
    np.testing.assert_allclose(
        out["target_probs"],
        [[e / (e + 1), 1 / (e + 1)], [0.5, 0.5], [e**0.5 / (e**0.5 + e**-0.5), e**-0.5 / (e**0.5 + e**-0.5)]],
        rtol=1e-6,
    )
    assert out["x"].shape == (3, 3)
    with pytest.raises(ValueError, match="temperature"):
        unlearn.bad_teacher_set(np.ones((1, 3)), np.zeros((2, 3)), competent, incompetent, temperature=0)
