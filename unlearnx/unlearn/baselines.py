"""Training data for the standard unlearning baselines, as arrays for :func:`unlearnx.train.fit`.

Each baseline is ordinary training on a constructed set; the per-example objective of
:func:`unlearnx.train.example_losses` (ℓᵢ = wᵢ·CE or wᵢ·KL to soft targets) covers all of them:

* finetune: train on the retain set D_r;
* NegGrad+: D_r with weight +1 and D_f with weight −w, so a step descends on D_r and ascends on D_f;
* amnesiac: D_r ∪ D_f with every forget label replaced by a uniformly drawn *wrong* label;
* bad teacher: a fraction of D_r with the original model's softmax(f(x)/T) as targets, plus D_f with a
  randomly initialised ("incompetent") teacher's softmax(f(x)/T); the student minimises KL to them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]

__all__ = ["ascent_mixture", "bad_teacher_set", "random_wrong_labels", "relabel_mixture"]


def _concat(*parts: Arrays) -> dict[str, np.ndarray]:
    keys = set(parts[0])
    for part in parts[1:]:
        if set(part) != keys:
            raise ValueError(
                f"cannot combine example sets with different fields: {sorted(keys)} vs {sorted(part)}"
            )
    return {key: np.concatenate([np.asarray(part[key]) for part in parts]) for key in sorted(keys)}


def random_wrong_labels(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """For each label y a label drawn uniformly from the other C − 1 classes: (y + U{1..C−1}) mod C."""
    if num_classes < 2:
        raise ValueError(f"relabelling needs at least 2 classes, got {num_classes}")
    labels = np.asarray(labels)
    shift = np.random.default_rng(seed).integers(1, num_classes, size=labels.shape)
    return ((labels + shift) % num_classes).astype(labels.dtype)


def ascent_mixture(retain: Arrays, forget: Arrays, *, forget_weight: float = 1.0) -> dict[str, np.ndarray]:
    """NegGrad+ examples: retain with weight +1, forget with weight −``forget_weight``."""
    if forget_weight < 0:
        raise ValueError(f"forget_weight must be non-negative, got {forget_weight}")
    weighted_retain = {**retain, "weight": np.ones(len(retain["y"]), np.float32)}
    weighted_forget = {**forget, "weight": np.full(len(forget["y"]), -forget_weight, np.float32)}
    return _concat(weighted_retain, weighted_forget)


def relabel_mixture(retain: Arrays, forget: Arrays, *, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Amnesiac examples: the retain set plus the forget set with random wrong labels."""
    relabelled = {**forget, "y": random_wrong_labels(forget["y"], num_classes, seed)}
    return _concat(retain, relabelled)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def bad_teacher_set(
    retain_x: np.ndarray,
    forget_x: np.ndarray,
    competent_logits: np.ndarray,
    incompetent_logits: np.ndarray,
    *,
    temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """Bad-teacher distillation examples ``{"x", "target_probs"}``.

    Args:
      retain_x: the retain inputs to distil (the reference uses 30% of D_r).
      forget_x: the forget inputs.
      competent_logits: the original model's logits on ``retain_x``.
      incompetent_logits: a randomly initialised model's logits on ``forget_x``.
      temperature: KL temperature T.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(competent_logits) != len(retain_x) or len(incompetent_logits) != len(forget_x):
        raise ValueError("teacher logits must have one row per input")
    return {
        "x": np.concatenate([retain_x, forget_x]),
        "target_probs": np.concatenate(
            [_softmax(competent_logits, temperature), _softmax(incompetent_logits, temperature)]
        ),
    }
