"""Permuted-input task sequences (permuted MNIST and the like), the standard domain-incremental benchmark.

Task 0 is the data set as it is; task t > 0 applies one fixed permutation π_t of the flattened input
features (pixels) to every example, train and test alike, and keeps the labels:

    x⁽ᵗ⁾ = x[π_t],   π_0 = identity,   π_t ~ uniform over permutations, drawn from ``(seed, t)``,

so a seed fixes the whole sequence, a shorter sequence is a prefix of a longer one, and every task has the
same label space and input statistics up to the feature order (Goodfellow et al., 2013; Kirkpatrick et al.,
2017).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from unlearnx import _validation as checks

__all__ = ["PermutedTasks", "permute_features", "task_permutation"]


def task_permutation(seed: int, task: int, features: int) -> np.ndarray:
    """π_t: the feature permutation of task ``task`` in the sequence of ``seed`` (the identity for task 0).

    Args:
        seed: the sequence's seed (≥ 0).
        task: the task index t ≥ 0.
        features: the number of input features (pixels × channels), ≥ 1.

    Returns:
        An int64 permutation of ``range(features)``, drawn from
        ``numpy.random.default_rng((seed, task, 7919))``.

    Raises:
        ValueError: a negative ``seed`` or ``task``, or ``features`` < 1.
        TypeError: a non-integer argument.

    Examples:
        >>> from unlearnx.continual.permuted import task_permutation
        >>> task_permutation(0, 0, 4).tolist(), sorted(task_permutation(0, 3, 4).tolist())
        ([0, 1, 2, 3], [0, 1, 2, 3])
    """
    seed = checks.static_int("seed", seed, low=0)
    task = checks.static_int("task", task, low=0)
    features = checks.static_int("features", features, low=1)
    if task == 0:
        return np.arange(features)
    return np.random.default_rng((seed, task, 7919)).permutation(features)


def permute_features(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``x`` ``[n, ...]`` with each example's flattened features reordered by ``order``, in ``x``'s shape.

    Raises:
        ValueError: ``order`` is not one index per feature of an example.
    """
    flat = np.asarray(x).reshape(len(x), -1)
    if np.shape(order) != (flat.shape[1],):
        raise ValueError(
            f"order must hold one index per feature ({flat.shape[1]}), got shape {np.shape(order)}"
        )
    return np.ascontiguousarray(flat[:, order].reshape(np.shape(x)))


class PermutedTasks:
    """The train and test arrays of one seed's permuted task sequence, permuted on first use and cached.

    Args:
        train: ``{"x": [n, ...], "y": [n]}``, the training split every task permutes.
        test: ``{"x": [m, ...], "y": [m]}``, the test split, with the same example shape.
        seed: the sequence's seed (:func:`task_permutation`).

    Attributes:
        input_shape: one example's shape; ``features`` its size.

    Raises:
        ValueError: splits without ``"x"`` and ``"y"``, or whose example shapes differ.

    Examples:
        >>> import numpy as np
        >>> from unlearnx.continual.permuted import PermutedTasks
        >>> split = {"x": np.arange(8).reshape(2, 2, 2), "y": np.array([0, 1])}
        >>> tasks = PermutedTasks(split, split, seed=0)
        >>> tasks.train(0)["x"].tolist() == split["x"].tolist(), tasks.test(1)["x"].shape
        (True, (2, 2, 2))
    """

    def __init__(self, train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], *, seed: int):
        for name, split in (("train", train), ("test", test)):
            if not {"x", "y"} <= set(split):
                raise ValueError(f"{name} must hold 'x' and 'y', got keys {sorted(split)}")
        if np.shape(train["x"])[1:] != np.shape(test["x"])[1:]:
            raise ValueError(
                f"train and test examples differ in shape: {np.shape(train['x'])[1:]} vs "
                f"{np.shape(test['x'])[1:]}"
            )
        self._splits = {"train": train, "test": test}
        self.input_shape = tuple(np.shape(train["x"])[1:])
        self.features = int(np.prod(self.input_shape))
        self.seed = checks.static_int("seed", seed, low=0)
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _x(self, split: str, task: int) -> np.ndarray:
        if (split, task) not in self._cache:
            order = task_permutation(self.seed, task, self.features)
            self._cache[split, task] = permute_features(self._splits[split]["x"], order)
        return self._cache[split, task]

    def train(self, task: int) -> dict[str, np.ndarray]:
        """Task ``task``'s training examples ``{"x", "y"}``."""
        return {"x": self._x("train", task), "y": self._splits["train"]["y"]}

    def test(self, task: int) -> dict[str, np.ndarray]:
        """Task ``task``'s test examples ``{"x", "y"}``."""
        return {"x": self._x("test", task), "y": self._splits["test"]["y"]}
