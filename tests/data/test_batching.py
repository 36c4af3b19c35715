"""Tests for unlearnx.data.batches and num_batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnx.data import batches, num_batches


def _arrays(n: int) -> dict[str, np.ndarray]:
    return {"idx": np.arange(n), "x": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}


def _order(n: int, batch_size: int, **kwargs) -> np.ndarray:
    return np.concatenate([b["idx"] for b in batches(_arrays(n), batch_size, **kwargs)])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 150),
    batch_size=st.integers(1, 40),
    seed=st.one_of(st.none(), st.integers(0, 2**40)),
    epoch=st.integers(0, 5),
)
def test_each_example_exactly_once(n, batch_size, seed, epoch):
    out = list(batches(_arrays(n), batch_size, seed=seed, epoch=epoch))
    assert len(out) == num_batches(n, batch_size)
    order = np.concatenate([b["idx"] for b in out])
    assert np.array_equal(np.sort(order), np.arange(n))
    sizes = [len(b["idx"]) for b in out]
    assert all(s == batch_size for s in sizes[:-1])
    assert sizes[-1] == (n % batch_size or batch_size)
    for b in out:
        assert set(b) == {"idx", "x"}
        np.testing.assert_array_equal(b["x"], _arrays(n)["x"][b["idx"]])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 150), batch_size=st.integers(1, 40), seed=st.none() | st.just(3))
def test_drop_remainder(n, batch_size, seed):
    out = list(batches(_arrays(n), batch_size, seed=seed, drop_remainder=True))
    assert len(out) == n // batch_size == num_batches(n, batch_size, drop_remainder=True)
    assert all(len(b["idx"]) == batch_size for b in out)
    order = np.concatenate([b["idx"] for b in out]) if out else np.array([], int)
    assert len(np.unique(order)) == len(order)


def test_last_batch_smaller():
    sizes = [len(b["idx"]) for b in batches(_arrays(10), 4, seed=0)]
    assert sizes == [4, 4, 2]


def test_seed_none_is_identity():
    assert np.array_equal(_order(37, 8), np.arange(37))
    assert np.array_equal(_order(37, 8, epoch=3), np.arange(37))


def test_shuffle_deterministic_in_seed_and_epoch():
    a = _order(200, 16, seed=7, epoch=2)
    assert np.array_equal(a, _order(200, 16, seed=7, epoch=2))
    assert not np.array_equal(a, np.arange(200))
    assert not np.array_equal(a, _order(200, 16, seed=7, epoch=3))
    assert not np.array_equal(a, _order(200, 16, seed=8, epoch=2))
    # The permutation does not depend on the batch size.
    assert np.array_equal(a, _order(200, 50, seed=7, epoch=2))


def test_works_with_dataset_arrays_and_readonly_inputs():
    x = np.zeros((5, 2, 2, 1), np.float32)
    x.setflags(write=False)
    out = list(batches({"x": x, "y": np.arange(5)}, 2, seed=1))
    assert [b["x"].shape for b in out] == [(2, 2, 2, 1), (2, 2, 2, 1), (1, 2, 2, 1)]


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        ({"a": np.zeros(3), "b": np.zeros(4)}, {}, r"'a'\] has 3, arrays\['b'\] has 4"),
        ({}, {}, "empty"),
        ({"a": np.zeros(0)}, {}, "no examples"),
        ({"a": np.float32(1.0)}, {}, "scalar"),
        ({"a": np.zeros(3)}, {"batch_size": 0}, "positive"),
        ({"a": np.zeros(3)}, {"batch_size": 2.0}, "positive"),
        ({"a": np.zeros(3)}, {"batch_size": True}, "positive"),
        ({"a": np.zeros(3)}, {"seed": -1}, "seed"),
        ({"a": np.zeros(3)}, {"epoch": -1}, "epoch"),
    ],
)
def test_errors_raised_eagerly(arrays, kwargs, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        batches(arrays, **kwargs)  # no iteration needed


def test_num_batches():
    assert num_batches(10, 4) == 3
    assert num_batches(10, 4, drop_remainder=True) == 2
    assert num_batches(8, 4) == num_batches(8, 4, drop_remainder=True) == 2
    assert num_batches(0, 4) == 0
    with pytest.raises(ValueError):
        num_batches(10, 0)
    with pytest.raises(ValueError):
        num_batches(-1, 3)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 90),
    batch_size=st.integers(1, 30),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
    offset=st.integers(0, 3),
)
def test_epoch_batches_are_the_batches_of_successive_epochs(n, batch_size, seed, offset):
    from unlearnx.data import EpochBatches

    sampler = EpochBatches(_arrays(n), batch_size, seed=seed, epoch_offset=offset)
    drop = n >= batch_size  # the default: drop short batches unless the set is smaller than one batch
    assert sampler.per_epoch == num_batches(n, batch_size, drop)
    want = [
        b["idx"]
        for epoch in range(offset, offset + 3)
        for b in batches(_arrays(n), batch_size, seed=seed, epoch=epoch, drop_remainder=drop)
    ]
    steps = list(range(3 * sampler.per_epoch))
    for step in [*steps[::-1], *steps]:  # random access in any order gives the same batches
        np.testing.assert_array_equal(sampler(step)["idx"], want[step])


def test_epoch_batches_augment_is_seeded_by_epoch_and_index():
    from unlearnx.data import EpochBatches

    def tag(batch, rng):
        return {**batch, "noise": rng.integers(0, 2**31, len(batch["idx"]))}

    sampler = EpochBatches(_arrays(10), 4, seed=1, augment=tag)
    want = np.random.default_rng((1, 1, 0)).integers(0, 2**31, 4)  # epoch 1, batch 0 = step 2
    np.testing.assert_array_equal(sampler(2)["noise"], want)
    with pytest.raises(ValueError, match="augment needs a seed"):
        EpochBatches(_arrays(10), 4, augment=tag)
    with pytest.raises(ValueError, match="mapping"):
        EpochBatches([np.arange(3)], 2)
