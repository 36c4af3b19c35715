"""Membership-inference attacks used to score unlearning.

* Entropy MIA, as the SSD reference computes it: a logistic regression (balanced class weights, lbfgs) is
  fitted on the softmax entropies of retain-train examples (members, label 1) against test examples
  (non-members, label 0); the score is the fraction of forget-train examples it predicts to be members.
  The target is the score of a model retrained without the forget set, not 0.
* Loss MIA: a logistic regression on per-example cross-entropy, forget-train (members) against an equal
  number of held-out examples (non-members), scored by stratified k-fold cross-validated accuracy; 0.5 is
  chance, i.e. the attacker cannot tell the forget set from unseen data.
"""

from __future__ import annotations

import numpy as np

from unlearnx import _validation as checks

__all__ = ["entropy_mia", "loss_mia"]


def _feature(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, np.float64).reshape(-1, 1)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numbers, got {type(values).__name__}") from error
    if len(array) == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values")
    return array


def entropy_mia(retain_entropy, test_entropy, forget_entropy) -> float:
    """Fraction of forget-train examples a retain-vs-test entropy attacker calls members (see module doc).

    Args:
        retain_entropy: softmax entropies of retain-train examples (members), e.g. from :func:`entropy`.
        test_entropy: entropies of test examples (non-members).
        forget_entropy: entropies of the forget-train examples to score.

    Returns:
        The fraction in [0, 1] of forget examples predicted to be members, as a Python float.

    Raises:
        ValueError: an empty or non-finite input.
        TypeError: inputs that are not numbers.

    Examples:
        >>> from unlearnx import eval
        >>> members, non_members = [0.1, 0.2, 0.15, 0.05], [1.0, 1.2, 0.9, 1.1]
        >>> eval.entropy_mia(members, non_members, [0.1, 0.12, 1.05, 1.2])  # two look like members
        0.5

    References:
        Foster, Schoepf and Brintrup, *Fast Machine Unlearning Without Retraining Through Selective Synaptic
        Dampening*, AAAI 2024; Chundawat et al., *Can Bad Teaching Induce Forgetting?*, AAAI 2023.
    """
    from sklearn.linear_model import LogisticRegression

    retain = _feature("retain_entropy", retain_entropy)
    test = _feature("test_entropy", test_entropy)
    forget = _feature("forget_entropy", forget_entropy)
    features = np.concatenate([retain, test])
    labels = np.concatenate([np.ones(len(retain)), np.zeros(len(test))])
    attacker = LogisticRegression(class_weight="balanced", solver="lbfgs")
    attacker.fit(features, labels)
    return float(np.mean(attacker.predict(forget)))


def loss_mia(member_losses, nonmember_losses, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a loss-threshold attacker, members vs non-members (0.5 = chance).

    The larger group is subsampled (with ``seed``) to the size of the smaller, so chance is exactly 0.5.

    Args:
        member_losses: per-example losses of members (e.g. the forget set), e.g. from :func:`cross_entropy`.
        nonmember_losses: per-example losses of held-out examples.
        folds: the number of stratified cross-validation folds, ≥ 2.
        seed: seed of the subsampling and of the fold split, ≥ 0.

    Returns:
        The mean cross-validated attack accuracy in [0, 1], as a Python float.

    Raises:
        ValueError: an empty or non-finite input, or fewer than ``folds`` examples in the smaller group.
        TypeError: inputs that are not numbers, or non-integer ``folds``/``seed``.

    Examples:
        >>> from unlearnx import eval
        >>> members = [0.01 * i for i in range(10)]  # low losses
        >>> eval.loss_mia(members, [5.0 + 0.1 * i for i in range(10)])  # perfectly separable
        1.0

    References:
        Shokri et al., *Membership Inference Attacks Against Machine Learning Models*, IEEE S&P 2017.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    checks.static_int("folds", folds, low=2)
    checks.static_int("seed", seed, low=0)
    members = _feature("member_losses", member_losses)
    nonmembers = _feature("nonmember_losses", nonmember_losses)
    size = min(len(members), len(nonmembers))
    if size < folds:
        raise ValueError(f"loss_mia needs at least {folds} examples per group, got {size}")
    rng = np.random.default_rng(seed)
    members = members[rng.permutation(len(members))[:size]]
    nonmembers = nonmembers[rng.permutation(len(nonmembers))[:size]]
    features = np.concatenate([members, nonmembers])
    labels = np.concatenate([np.ones(size), np.zeros(size)])
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(LogisticRegression(solver="lbfgs"), features, labels, cv=splitter)
    return float(np.mean(scores))
