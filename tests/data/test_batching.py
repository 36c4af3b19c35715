"""Tests for unlearnx.data.batches, EpochBatches and num_batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnx.data import EpochBatches, batches, num_batches
from unlearnx.data.batching import _pipeline


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
        ({"a": np.zeros(3)}, {"batch_size": 3, "process_count": 2}, r"batch_size=3 .*process_count=2"),
        ({"a": np.zeros(3)}, {"process_count": 0}, "process_count"),
        ({"a": np.zeros(3)}, {"process_index": 2, "process_count": 2}, "process_index"),
        ({"a": np.zeros(3)}, {"process_index": -1}, "process_index"),
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


# An independent NumPy reference of the batching before the Grain pipeline: every experiment's data order.


def _reference_order(n, seed, epoch):
    if seed is None:
        return np.arange(n)
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def _reference(arrays, batch_size, seed=None, epoch=0, drop_remainder=False):
    n = len(next(iter(arrays.values())))
    order = _reference_order(n, seed, epoch)
    stop = n - n % batch_size if drop_remainder else n
    return [
        {key: value[order[start : start + batch_size]] for key, value in arrays.items()}
        for start in range(0, stop, batch_size)
    ]


def _assert_same_bytes(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
        assert got[key].tobytes() == want[key].tobytes()


def _mixed(n):
    rng = np.random.default_rng(n)
    return {
        "x": rng.standard_normal((n, 3, 2), dtype=np.float32),
        "y": rng.integers(0, 10, n).astype(np.int32),
        "w": rng.random(n),
    }


@pytest.mark.parametrize(
    ("n", "batch_size", "seed", "epoch", "drop_remainder"),
    [
        (1, 1, None, 0, False),
        (10, 4, None, 0, False),
        (10, 4, 0, 0, True),
        (10, 16, 3, 2, False),
        (10, 16, 3, 2, True),
        (64, 8, 7, 5, False),
        (257, 32, 2**40, 1, False),
        (257, 32, 11, 3, True),
        (1000, 128, 0, 9, False),
    ],
)
def test_batches_match_the_numpy_reference_byte_for_byte(n, batch_size, seed, epoch, drop_remainder):
    arrays = _mixed(n)
    got = list(batches(arrays, batch_size, seed=seed, epoch=epoch, drop_remainder=drop_remainder))
    want = _reference(arrays, batch_size, seed, epoch, drop_remainder)
    assert len(got) == len(want) == num_batches(n, batch_size, drop_remainder)
    for g, w in zip(got, want, strict=True):
        _assert_same_bytes(g, w)


@pytest.mark.parametrize(
    ("n", "batch_size", "seed", "offset", "drop_remainder"),
    [
        (10, 4, 1, 0, None),
        (10, 16, 2, 1, None),
        (257, 32, 5, 3, None),
        (257, 32, 5, 0, False),
        (64, 8, 0, 2, True),
    ],
)
def test_epoch_batches_match_the_numpy_reference_with_augment_and_offset(
    n, batch_size, seed, offset, drop_remainder
):
    def augment(batch, rng):
        return {**batch, "x": batch["x"] + rng.standard_normal(batch["x"].shape, dtype=np.float32)}

    arrays = _mixed(n)
    sampler = EpochBatches(
        arrays, batch_size, seed=seed, drop_remainder=drop_remainder, augment=augment, epoch_offset=offset
    )
    drop = n >= batch_size if drop_remainder is None else drop_remainder
    per_epoch = num_batches(n, batch_size, drop)
    assert sampler.per_epoch == per_epoch
    steps = list(range(3 * per_epoch))
    for step in [*steps, *steps[::-1], 0, per_epoch, 0]:  # random access across epochs
        epoch, index = offset + step // per_epoch, step % per_epoch
        want = augment(
            _reference(arrays, batch_size, seed, epoch, drop)[index],
            np.random.default_rng((seed, epoch, index)),
        )
        _assert_same_bytes(sampler(step), want)


@pytest.mark.parametrize(
    ("n", "batch_size", "process_count", "drop_remainder"),
    [
        (64, 8, 2, False),
        (64, 8, 4, True),
        (70, 8, 4, False),
        (70, 8, 4, True),
        (5, 8, 4, False),
        (30, 12, 3, False),
    ],
)
@pytest.mark.parametrize("seed", [None, 4])
def test_processes_load_disjoint_shares_of_each_global_batch(
    n, batch_size, process_count, drop_remainder, seed
):
    arrays = _mixed(n)
    kwargs = {"seed": seed, "epoch": 2, "drop_remainder": drop_remainder}
    single = list(batches(arrays, batch_size, **kwargs))
    per_process = [
        list(batches(arrays, batch_size, process_index=p, process_count=process_count, **kwargs))
        for p in range(process_count)
    ]
    share = batch_size // process_count
    for process, got in enumerate(per_process):
        assert len(got) == len(single)  # lock-step: every process yields the same number of batches
        for g, whole in zip(got, single, strict=True):
            # Process p loads rows [p·k, (p+1)·k) of the global batch (what parallel.process_share keeps).
            want = {key: value[process * share : (process + 1) * share] for key, value in whole.items()}
            _assert_same_bytes(g, want)
            if len(whole["y"]) == batch_size:
                assert len(g["y"]) == share
    for step, whole in enumerate(single):  # the shares, in process order, make up the global batch
        joined = {key: np.concatenate([got[step][key] for got in per_process]) for key in whole}
        _assert_same_bytes(joined, whole)
    seen = np.concatenate([g["w"] for got in per_process for g in got])
    epoch = np.concatenate([b["w"] for b in single])
    assert len(seen) == len(epoch) and np.array_equal(
        np.sort(seen), np.sort(epoch)
    )  # disjoint, union = epoch


def test_epoch_pipeline_is_a_grain_map_dataset():
    import grain

    order = np.arange(10)[::-1].copy()
    pipeline = _pipeline({"y": np.arange(10) * 10}, order, 4, False, process_index=1, process_count=2)
    assert isinstance(pipeline, grain.MapDataset)
    assert [pipeline[i]["y"].tolist() for i in range(len(pipeline))] == [[70, 60], [30, 20], []]
