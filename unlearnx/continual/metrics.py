"""Continual-learning metrics from the accuracy matrix R (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018).

R[i, j] is the accuracy on task j after training through task i (T × T, every task evaluated after every
phase, future ones included); b̄ⱼ is task j's accuracy at random initialisation. With 1-based task indices:

    ACC = (1/T) Σᵢ R[T, i]
    BWT = 1/(T−1) Σ_{i<T} (R[T, i] − R[i, i])                 (negative: forgetting)
    FWT = 1/(T−1) Σ_{i≥2} (R[i−1, i] − b̄ᵢ)
    forgetting F_T = 1/(T−1) Σ_{j<T} (max_{l<T} R[l, j] − R[T, j])
"""

from __future__ import annotations

import numpy as np

__all__ = ["cl_metrics"]


def cl_metrics(accuracy_matrix, random_accuracy) -> dict[str, float]:
    """``{"acc", "bwt", "fwt", "forgetting"}`` of a T × T accuracy matrix (see the module docstring).

    A NaN accuracy (a diverged phase, see :func:`unlearnx.eval.accuracy`) makes every metric it enters NaN,
    never a plausible number.

    Raises:
      ValueError: a non-square or empty matrix, ``random_accuracy`` without one entry per task, or an
        accuracy outside [0, 1] (or infinite).
    """
    matrix = np.asarray(accuracy_matrix, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"accuracy_matrix must be a non-empty square T × T matrix, got shape {matrix.shape}")
    tasks = matrix.shape[0]
    baseline = np.asarray(random_accuracy, np.float64)
    if baseline.shape != (tasks,):
        raise ValueError(
            f"random_accuracy must have one entry per task, shape ({tasks},), got {baseline.shape}"
        )
    for name, values in (("accuracy_matrix", matrix), ("random_accuracy", baseline)):
        bad = ~np.isnan(values) & ((values < 0) | (values > 1))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} must hold accuracies in [0, 1] (or NaN), found {values[index]} at {index}"
            )
    final = matrix[-1]
    if tasks == 1:
        return {"acc": float(final.mean()), "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}
    earlier = np.arange(tasks - 1)
    return {
        "acc": float(final.mean()),
        "bwt": float(np.mean(final[earlier] - matrix[earlier, earlier])),
        "fwt": float(np.mean(matrix[earlier, earlier + 1] - baseline[1:])),
        "forgetting": float(np.mean(matrix[:-1, :-1].max(axis=0) - final[:-1])),
    }
