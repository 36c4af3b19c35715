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

from unlearnx import _validation as checks

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


def _labels(name: str, arrays: Arrays) -> np.ndarray:
    if not isinstance(arrays, Mapping) or "y" not in arrays:
        keys = sorted(arrays) if isinstance(arrays, Mapping) else type(arrays).__name__
        raise ValueError(f"{name} must be a dict of arrays with labels 'y', got {keys}")
    return np.asarray(arrays["y"])


def random_wrong_labels(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """For each label y a label drawn uniformly from the other C − 1 classes: (y + U{1..C−1}) mod C.

    Args:
        labels: integer class labels in [0, C), any shape.
        num_classes: C ≥ 2.
        seed: seed of the NumPy generator that draws the shifts.

    Returns:
        Labels of ``labels``' shape and dtype, each different from the original.

    Raises:
        ValueError: fewer than 2 classes, or a label outside [0, C) (it would wrap to a valid class).
        TypeError: non-integer ``num_classes``, ``seed`` or labels.

    Examples:
        >>> import numpy as np
        >>> labels = np.array([0, 1, 2, 0, 1, 2])
        >>> wrong = random_wrong_labels(labels, num_classes=3, seed=0)
        >>> bool(np.all(wrong != labels)), bool(np.all((0 <= wrong) & (wrong < 3)))
        (True, True)
        >>> random_wrong_labels(np.array([0, 1]), num_classes=2, seed=0).tolist()  # C = 2: the other class
        [1, 0]
    """
    checks.static_int("num_classes", num_classes, low=2)
    checks.static_int("seed", seed, low=0)
    labels = np.asarray(labels)
    checks.check_ids("labels", labels, num_classes, what="class labels")
    shift = np.random.default_rng(seed).integers(1, num_classes, size=labels.shape)
    return ((labels + shift) % num_classes).astype(labels.dtype)


def ascent_mixture(retain: Arrays, forget: Arrays, *, forget_weight: float = 1.0) -> dict[str, np.ndarray]:
    """NegGrad+ examples: retain with weight +1, forget with weight −``forget_weight``.

    With :func:`unlearnx.train.example_losses` the loss is then mean_i wᵢ·CEᵢ: a step descends on D_r and
    ascends on D_f.

    Args:
        retain: D_r, a dict of arrays with labels ``"y"``.
        forget: D_f, a dict with the same fields.
        forget_weight: w, finite and ≥ 0.

    Returns:
        The concatenated fields (retain first) plus ``"weight"`` (float32).

    Raises:
        ValueError: the sets have different fields, lack ``"y"``, or ``forget_weight`` is out of range.

    Examples:
        >>> import numpy as np
        >>> mixed = ascent_mixture({"y": np.array([0, 1])}, {"y": np.array([2])}, forget_weight=0.5)
        >>> mixed["y"].tolist(), mixed["weight"].tolist()
        ([0, 1, 2], [1.0, 1.0, -0.5])
    """
    checks.static_number("forget_weight", forget_weight, low=0.0)
    weighted_retain = {**retain, "weight": np.ones(len(_labels("retain", retain)), np.float32)}
    weighted_forget = {
        **forget,
        "weight": np.full(len(_labels("forget", forget)), -forget_weight, np.float32),
    }
    return _concat(weighted_retain, weighted_forget)


def relabel_mixture(retain: Arrays, forget: Arrays, *, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Amnesiac examples: the retain set plus the forget set with random wrong labels.

    Args:
        retain: D_r, a dict of arrays with labels ``"y"``.
        forget: D_f, a dict with the same fields.
        num_classes: C ≥ 2.
        seed: seed of :func:`random_wrong_labels`.

    Returns:
        The concatenated fields, retain first, with every forget label replaced by a wrong one.

    Raises:
        ValueError: the sets have different fields or lack ``"y"``, or a label is outside [0, C).

    Examples:
        >>> import numpy as np
        >>> mixed = relabel_mixture({"y": np.array([0, 0])}, {"y": np.array([1, 1])}, num_classes=2, seed=0)
        >>> mixed["y"].tolist()
        [0, 0, 0, 0]
    """
    _labels("retain", retain)
    relabelled = {**forget, "y": random_wrong_labels(_labels("forget", forget), num_classes, seed)}
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

    Targets are softmax(z/T) of the competent teacher on the retain inputs and of the incompetent one on
    the forget inputs.

    Args:
        retain_x: the retain inputs to distil (the reference uses 30% of D_r).
        forget_x: the forget inputs.
        competent_logits: the original model's logits on ``retain_x``.
        incompetent_logits: a randomly initialised model's logits on ``forget_x``.
        temperature: KL temperature T > 0.

    Returns:
        ``{"x": retain_x then forget_x, "target_probs": float32 [N, C]}``.

    Raises:
        ValueError: logits that are not finite ``[N, C]`` or not one row per input, or T ≤ 0.

    Examples:
        >>> import numpy as np
        >>> data = bad_teacher_set(np.zeros((1, 2)), np.ones((1, 2)), np.array([[np.log(3.0), 0.0]]),
        ...                        np.array([[0.0, 0.0]]))
        >>> data["target_probs"].tolist()
        [[0.75, 0.25], [0.5, 0.5]]

    References:
        Chundawat et al., `Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks Using an
        Incompetent Teacher <https://arxiv.org/abs/2205.08096>`_, AAAI 2023.
    """
    checks.static_number("temperature", temperature, low=0.0, low_open=True)
    if len(competent_logits) != len(retain_x) or len(incompetent_logits) != len(forget_x):
        raise ValueError(
            f"teacher logits must have one row per input: competent_logits {np.shape(competent_logits)} for "
            f"retain_x {np.shape(retain_x)}, incompetent_logits {np.shape(incompetent_logits)} for forget_x "
            f"{np.shape(forget_x)}"
        )
    for name, logits in (("competent_logits", competent_logits), ("incompetent_logits", incompetent_logits)):
        if np.ndim(logits) != 2 or not np.all(np.isfinite(logits)):
            raise ValueError(f"{name} must be finite [N, C] logits, got shape {np.shape(logits)}")
    return {
        "x": np.concatenate([retain_x, forget_x]),
        "target_probs": np.concatenate(
            [_softmax(competent_logits, temperature), _softmax(incompetent_logits, temperature)]
        ),
    }
