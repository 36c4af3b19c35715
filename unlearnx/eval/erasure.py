"""Concept-erasure metrics for text-to-image models: erased rate, preservation accuracy, attack success rate
and the change of cross-attention key/value outputs.

A classifier labels each generated sample; with its predicted labels ŷ:

    erased rate      = mean_i [ŷᵢ = concept]          over samples of prompts naming the erased concept
    attack success   = mean_i [ŷᵢ = concept]          over samples generated from an attack's conditioning
    preservation acc = mean_i [ŷᵢ = yᵢ]               over samples of prompts of other concepts (labels yᵢ)

(lower erased rate and attack success are better; higher preservation is better). The edit's direct effect
on unrelated prompts is the relative change of the projections of their text rows C through every selected
cross-attention kernel:

    ΔKV = √( Σ_l ‖C K′_l − C K_l‖²_F / Σ_l ‖C K_l‖²_F )
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree
from unlearnx._typing import PyTree

__all__ = ["attack_success_rate", "erased_rate", "kv_output_change", "preservation_accuracy"]


def _labels(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of labels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer labels, got dtype {array.dtype}")
    if array.min() < 0:
        index = int(np.argmin(array))
        raise ValueError(f"{name} must hold class labels >= 0, found {int(array[index])} at index {index}")
    return array


def erased_rate(predicted: Any, concept: int) -> float:
    """Fraction of samples (of prompts naming the erased concept) still classified as ``concept``.

    Args:
        predicted: Predicted labels ``[N]`` (ints).
        concept: The erased concept's label.

    Returns:
        mean_i [ŷᵢ = concept] as a Python float (lower is better).

    Raises:
        ValueError: Empty or non-1-D ``predicted``, or a negative label or ``concept``.
        TypeError: Non-integer labels.

    Examples:
        >>> from unlearnx import eval
        >>> eval.erased_rate([3, 1, 3, 0], concept=3)
        0.5

    References:
        Gandikota et al., *Unified Concept Editing in Diffusion Models*, WACV 2024.
    """
    concept = checks.static_int("concept", concept, low=0)
    return float(np.mean(_labels("predicted", predicted) == concept))


def attack_success_rate(predicted: Any, concept: int) -> float:
    """Fraction of samples generated from an attack's conditioning that are classified as ``concept``
    (the erased rate of the attack's samples).

    Args:
        predicted: The classifier's labels ``[N]`` (ints) of the attack's samples.
        concept: The label of the concept the attack tries to regenerate.

    Returns:
        The attack's success rate, a Python float in [0, 1] (lower is better).

    Raises:
        ValueError, TypeError: as :func:`erased_rate`.

    Examples:
        >>> from unlearnx import eval
        >>> eval.attack_success_rate([2, 2, 2, 5], concept=2)
        0.75

    References:
        Zhang et al., *To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy to
        Generate Unsafe Images ... For Now* (UnlearnDiffAtk), ECCV 2024.
    """
    return erased_rate(predicted, concept)


def preservation_accuracy(predicted: Any, target: Any) -> float:
    """Fraction of samples of other concepts' prompts classified as their prompted label, mean_i [ŷᵢ = yᵢ].

    Args:
        predicted: Predicted labels ``[N]`` (ints).
        target: The prompted labels ``[N]`` (ints).

    Returns:
        The accuracy as a Python float (higher is better).

    Raises:
        ValueError: Empty, non-1-D or differently sized label arrays.
        TypeError: Non-integer labels.

    Examples:
        >>> from unlearnx import eval
        >>> eval.preservation_accuracy([0, 1, 2, 2], [0, 1, 2, 3])
        0.75
    """
    predicted, target = _labels("predicted", predicted), _labels("target", target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} differ in size")
    return float(np.mean(predicted == target))


def kv_output_change(original: PyTree, edited: PyTree, keys: Any, *, where: tree.Where = None) -> float:
    """Relative change ΔKV of the selected kernels' outputs on the key rows (see the module docstring).

    Args:
        original: The unedited parameter tree.
        edited: The edited tree (same structure).
        keys: Text rows ``[..., d_in]`` (any leading shape, e.g. ``[prompts, L, d_in]``).
        where: Selector of the kernels (Flax layout ``(d_in, …)``); default
            :func:`unlearnx.erase.cross_attention_kv`.

    Returns:
        ΔKV as a Python float (computed in float64 on the host); NaN when a kernel holds NaN/inf.

    Raises:
        ValueError: No kernel selected, structure mismatch, or key width ≠ a kernel's ``d_in``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import eval
        >>> original = {"to_k": {"kernel": np.eye(2)}}
        >>> edited = {"to_k": {"kernel": 1.5 * np.eye(2)}}
        >>> eval.kv_output_change(original, edited, np.ones((3, 2)), where=lambda path: True)  # ‖0.5 C‖ / ‖C‖
        0.5
    """
    if where is None:
        from unlearnx.erase import cross_attention_kv

        where = cross_attention_kv
    tree.check_same_structure(original, edited, names=("original", "edited"))
    keys = np.asarray(keys, np.float64)
    if keys.ndim < 1 or not np.all(np.isfinite(keys)):
        raise ValueError(f"keys must be finite rows [..., d_in], got shape {keys.shape}")
    rows = keys.reshape(-1, keys.shape[-1])
    flags = dict(tree.leaves_with_paths(tree.select(original, where)))
    edited_leaves = dict(tree.leaves_with_paths(edited))
    change = total = 0.0
    selected = 0
    for path, kernel in tree.leaves_with_paths(original):
        if not flags[path]:
            continue
        selected += 1
        before = np.asarray(jnp.asarray(kernel), np.float64)
        after = np.asarray(jnp.asarray(edited_leaves[path]), np.float64)
        if before.shape[0] != rows.shape[1]:
            raise ValueError(
                f"kv_output_change: kernel {path!r} has d_in {before.shape[0]}, keys {rows.shape[1]}"
            )
        before, after = before.reshape(before.shape[0], -1), after.reshape(after.shape[0], -1)
        change += float(np.sum(np.square(rows @ (after - before))))
        total += float(np.sum(np.square(rows @ before)))
    if not selected:
        raise ValueError("kv_output_change: the selector matched no kernel")
    if not (np.isfinite(change) and np.isfinite(total)):  # a diverged edit is reported, not scored
        return float("nan")
    return float(np.sqrt(change / total)) if total > 0 else 0.0
