"""Tests for unlearnx.data.forget_retain_split."""

from __future__ import annotations

import numpy as np
import pytest

from unlearnx.data import Dataset, forget_retain_split


def _dataset(n: int = 40, num_classes: int = 5) -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.random((n, 3, 3, 1), dtype=np.float32)
    x[:, 0, 0, 0] = np.arange(n)  # tag every example with its position
    y = rng.integers(0, num_classes, size=n)
    return Dataset(x=x, y=y, num_classes=num_classes, name="toy")


def _positions(ds: Dataset) -> np.ndarray:
    return ds.x[:, 0, 0, 0].astype(int)


@pytest.mark.parametrize("forget", [2, [0], [1, 3], (4, 4), np.array([0, 2])])
def test_partition_is_exact_and_ordered(forget):
    ds = _dataset()
    forget_ds, retain_ds = forget_retain_split(ds, forget)
    classes = np.atleast_1d(forget)
    assert np.all(np.isin(forget_ds.y, classes))
    assert not np.any(np.isin(retain_ds.y, classes))
    assert len(forget_ds) + len(retain_ds) == len(ds)
    fpos, rpos = _positions(forget_ds), _positions(retain_ds)
    assert np.all(np.diff(fpos) > 0) and np.all(np.diff(rpos) > 0)  # order preserved
    assert not set(fpos) & set(rpos)
    assert np.array_equal(np.sort(np.concatenate([fpos, rpos])), np.arange(len(ds)))
    assert np.array_equal(forget_ds.y, ds.y[fpos]) and np.array_equal(retain_ds.y, ds.y[rpos])
    assert forget_ds.num_classes == retain_ds.num_classes == ds.num_classes


def test_forget_everything_leaves_empty_retain():
    ds = _dataset()
    forget_ds, retain_ds = forget_retain_split(ds, range(ds.num_classes))
    assert len(forget_ds) == len(ds) and len(retain_ds) == 0
    assert retain_ds.x.shape == (0, 3, 3, 1)


@pytest.mark.parametrize(
    ("forget", "match"),
    [
        ([], "empty"),
        (5, r"\[5\] are outside \[0, 5\)"),
        ([0, -1], r"\[-1\]"),
        ([1.5], "ints"),
        (True, "ints"),
    ],
)
def test_errors(forget, match):
    with pytest.raises(ValueError, match=match):
        forget_retain_split(_dataset(), forget)
