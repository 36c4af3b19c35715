"""scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified split."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "test", "all")
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of the digits dataset.

    The ``"train"``/``"test"`` split is an 80/20 split stratified by class, drawn with a fixed
    seed so it is identical on every call and machine.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.

    Returns:
        ``(x, y)`` with ``x`` float32 ``[N, 8, 8, 1]`` in ``[0, 1]`` and ``y`` int32 ``[N]``.

    Raises:
        ValueError: If the split is unknown.
    """
    if split not in SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; valid splits are {list(SPLITS)}.")
    # Imported lazily so that importing unlearnx.data does not pay for scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = bunch.target.astype(np.int32)
    if split == "all":
        return x, y
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return x[idx], y[idx]
