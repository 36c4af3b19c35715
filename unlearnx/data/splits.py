"""Class-wise forget/retain partitions for unlearning experiments."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from unlearnx.data.dataset import Dataset


def forget_retain_split(dataset: Dataset, forget_classes: int | Sequence[int]) -> tuple[Dataset, Dataset]:
    """Partitions a dataset into the examples of some classes and all other examples.

    Args:
        dataset: The dataset to partition.
        forget_classes: One class id or a non-empty collection of class ids, each in
            ``[0, dataset.num_classes)``. Duplicates are allowed.

    Returns:
        ``(forget, retain)``: the examples whose label is in ``forget_classes`` and the rest, each
        in their original order. Either may be empty if no example falls on that side.

    Raises:
        ValueError: If ``forget_classes`` is empty, holds a non-integer, or holds a class outside
            ``[0, dataset.num_classes)``.

    Examples:
        >>> from unlearnx import data
        >>> forget, retain = data.forget_retain_split(data.load("digits", "train"), forget_classes=[3])
        >>> set(forget.y.tolist()), 3 in retain.y, len(forget) + len(retain)
        ({3}, False, 1437)
    """
    raw = [forget_classes] if isinstance(forget_classes, int | np.integer) else forget_classes
    classes = []
    for c in raw:
        if isinstance(c, bool):
            raise ValueError(f"forget classes must be ints, got {c!r}.")
        try:
            classes.append(operator.index(c))
        except TypeError:
            raise ValueError(f"forget classes must be ints, got {c!r}.") from None
    if not classes:
        raise ValueError("forget_classes is empty; give at least one class to forget.")
    bad = sorted({c for c in classes if not 0 <= c < dataset.num_classes})
    if bad:
        raise ValueError(
            f"forget classes {bad} are outside [0, {dataset.num_classes}) for dataset {dataset.name!r}."
        )
    mask = np.isin(dataset.y, np.asarray(classes))
    return dataset.subset(mask), dataset.subset(~mask)
