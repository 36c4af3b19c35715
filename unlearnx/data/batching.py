"""Epoch-wise minibatching of in-memory arrays with Grain."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping

import numpy as np


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    try:
        size = operator.index(batch_size)
    except TypeError:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.") from None
    if size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    return size


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(arrays, Mapping):
        raise ValueError(f"arrays must be a mapping of name to array, got {type(arrays).__name__}.")
    if not arrays:
        raise ValueError("arrays is empty; need at least one array to batch.")
    data = {key: np.asarray(value) for key, value in arrays.items()}
    lengths = {}
    for key, value in data.items():
        if value.ndim == 0:
            raise ValueError(f"arrays[{key!r}] is a scalar; need a leading example dimension.")
        lengths[key] = len(value)
    first_key, n = next(iter(lengths.items()))
    for key, length in lengths.items():
        if length != n:
            raise ValueError(
                f"All arrays must have the same leading length: arrays[{first_key!r}] has {n}, "
                f"arrays[{key!r}] has {length}."
            )
    if n == 0:
        raise ValueError("arrays hold no examples; nothing to batch.")
    return data, n


def _check_epoch(epoch: int) -> int:
    epoch = operator.index(epoch)
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}.")
    return epoch


def _check_seed(seed: int | None) -> int | None:
    if seed is None:
        return None
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative or None, got {seed}.")
    return seed


def _order(n: int, seed: int | None, epoch: int) -> np.ndarray:
    """The example order of one epoch: a permutation of ``(seed, epoch)``, or the identity without a seed."""
    if seed is None:
        return np.arange(n)
    # One vectorised permutation per epoch (Grain's own index shuffle costs ~70 µs per example).
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def num_batches(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Returns how many batches :func:`batches` yields for ``n`` examples.

    Args:
        n: Number of examples (non-negative).
        batch_size: Positive batch size.
        drop_remainder: Whether a final partial batch is dropped.

    Returns:
        ⌊n / batch_size⌋ when ``drop_remainder``, else ⌈n / batch_size⌉.

    Raises:
        ValueError: If ``n`` is negative or ``batch_size`` is not a positive int.

    Examples:
        >>> from unlearnx import data
        >>> data.num_batches(10, 4), data.num_batches(10, 4, drop_remainder=True)
        (3, 2)
    """
    size = _check_batch_size(batch_size)
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}.")
    return n // size if drop_remainder else -(-n // size)


def _check_processes(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    count = operator.index(process_count)
    if count < 1:
        raise ValueError(f"process_count must be a positive int, got {count}.")
    index = operator.index(process_index)
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, process_count={count}), got {index}.")
    if batch_size % count:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by process_count={count}: each process loads "
            f"batch_size / process_count examples of every global batch."
        )
    return index, count


def _pipeline(
    data: dict[str, np.ndarray],
    order: np.ndarray,
    batch_size: int,
    drop_remainder: bool,
    process_index: int = 0,
    process_count: int = 1,
):
    """The Grain pipeline of one epoch: this process's batches of ``data`` in the example ``order``.

    ``MapDataset.range(G·P)`` numbers the per-process shares of the epoch (G global batches of P shares
    each), ``[p::P]`` keeps this process's shares (Grain's ``slice`` sharding idiom) and ``.map`` cuts
    share i as ``order[i·k:(i+1)·k]``, k = batch_size / P, and gathers it from every array with NumPy
    fancy indexing. The order is batched at the index level: Grain's element-wise ``.batch`` of the
    order costs ~15 µs per example, ten times what the rest of an epoch costs here.
    """
    import grain  # Lazy: importing Grain takes most of a second.

    share = batch_size // process_count
    global_batches = num_batches(len(order), batch_size, drop_remainder)

    def gather(i: int) -> dict[str, np.ndarray]:
        idx = order[i * share : (i + 1) * share]
        return {key: value[idx] for key, value in data.items()}

    shares = grain.MapDataset.range(global_batches * process_count)
    if process_count > 1:  # (the identity slice of one process would cost ~8 µs a batch)
        shares = shares[process_index::process_count]
    return shares.map(gather)


def batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_remainder: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterates over one epoch of minibatches, or over one process's share of each.

    The epoch's example order is the permutation
    ``np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)`` (the identity
    without a seed): a deterministic function of ``(seed, epoch)``, so reusing both repeats it and
    changing ``epoch`` gives a new permutation. It is drawn with NumPy rather than Grain's
    ``MapDataset.shuffle``, whose per-index Feistel shuffle costs ~70 µs per example and would
    change every experiment's data order. Global batch b holds the examples
    ``order[b·batch_size:(b+1)·batch_size]``; the last one is shorter, or dropped with
    ``drop_remainder``.

    A Grain ``MapDataset`` pipeline serves the batches: ``range`` over the index batches, a process
    shard (``[p::P]``) and a ``map`` that cuts each index batch from the order and gathers every
    array with NumPy fancy indexing (the order is batched at the index level, since Grain's
    element-wise ``batch`` costs ~15 µs per example).

    With ``process_count`` P > 1 (e.g. ``jax.process_index()`` and ``jax.process_count()``),
    process p loads rows [p·k, (p+1)·k) of every global batch, k = batch_size / P: what
    :func:`unlearnx.parallel.process_share` keeps of it, and the layout
    :func:`unlearnx.parallel.shard_batch` assembles. The processes' batches are disjoint, every
    process yields the same number of them, and concatenated in process order they are the
    single-process batches. A short last global batch (``drop_remainder=False``) gives each
    process its rows of it: fewer than k, possibly none; lock-step multi-host training wants
    ``drop_remainder=True``. The default (one process) yields global batches, which is what
    :func:`unlearnx.train.loop` and :func:`unlearnx.fisher.diagonal` expect on every process
    (they keep each process's share themselves).

    Args:
        arrays: Arrays sharing their leading (example) dimension, e.g. ``Dataset.arrays()``.
        batch_size: Positive number of examples per global batch.
        seed: Non-negative shuffle seed, or None to keep the original order.
        epoch: Non-negative epoch number, mixed into the shuffle seed.
        drop_remainder: Whether to drop the last global batch when it is smaller than ``batch_size``.
        process_index: This process's index p in [0, ``process_count``).
        process_count: Number of processes P sharing each global batch; must divide ``batch_size``.

    Returns:
        An iterator of :func:`num_batches` ``(n, batch_size, drop_remainder)`` dicts with the same
        keys as ``arrays`` and leading dimension ``batch_size / process_count`` (shorter for a short
        last batch). Arguments are validated when this function is called, not on first use.

    Raises:
        ValueError: If ``arrays`` is empty or holds no examples, if the arrays differ in length, if
            ``batch_size``, ``seed``, ``epoch``, ``process_index`` or ``process_count`` is invalid, or
            if ``process_count`` does not divide ``batch_size``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> arrays = {"x": np.arange(5.0), "y": np.arange(5)}
        >>> [batch["y"].tolist() for batch in data.batches(arrays, 2)]
        [[0, 1], [2, 3], [4]]
        >>> [batch["y"].tolist() for batch in data.batches(arrays, 2, process_index=1, process_count=2)]
        [[1], [3], []]
    """
    size = _check_batch_size(batch_size)
    data, n = _check_arrays(arrays)
    epoch = _check_epoch(epoch)
    seed = _check_seed(seed)
    process_index, process_count = _check_processes(size, process_index, process_count)
    pipeline = _pipeline(data, _order(n, seed, epoch), size, drop_remainder, process_index, process_count)

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(pipeline)):
            yield pipeline[i]

    return generate()


class EpochBatches:
    """Random access to the batches of :func:`batches` over successive epochs: ``sampler(step)`` is batch
    ``step mod per_epoch`` of epoch ``epoch_offset + step // per_epoch``, exactly as :func:`batches` yields
    it, so a training loop resumed at any step sees the same data (:func:`unlearnx.train.loop`).

    Each epoch's batches are indexed from the same Grain ``MapDataset`` pipeline as :func:`batches` (built
    once per epoch and kept while steps stay in that epoch). They are global batches: every process gets
    the same one, and :func:`unlearnx.train.loop` keeps each process's share
    (:func:`unlearnx.parallel.process_share`).

    Args:
        arrays: Arrays sharing their leading (example) dimension.
        batch_size: Positive number of examples per batch.
        seed: Shuffle seed (None keeps the original order).
        drop_remainder: Drop each epoch's short last batch; by default it is dropped unless the set is
            smaller than one batch (then the one batch holds every example).
        augment: Optional host transform ``augment(batch, generator)`` with a generator seeded by
            ``(seed, epoch, batch index)``, e.g. :func:`unlearnx.data.crop_and_flip`.
        epoch_offset: Number of the first epoch (a later training phase over new data continues the count).

    Attributes:
        per_epoch: Batches per epoch.

    Raises:
        ValueError: As :func:`batches`, and for an ``augment`` without a seed.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> arrays = {"x": np.arange(10.0), "y": np.arange(10)}
        >>> sampler = data.EpochBatches(arrays, 4, seed=0)
        >>> sampler.per_epoch  # the short last batch of 2 is dropped
        2
        >>> first = next(data.batches(arrays, 4, seed=0, epoch=1))
        >>> np.array_equal(sampler(2)["y"], first["y"])  # step 2 = batch 0 of epoch 1
        True
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        seed: int | None = None,
        drop_remainder: bool | None = None,
        augment=None,
        epoch_offset: int = 0,
    ):
        self.batch_size = _check_batch_size(batch_size)
        self.data, self.n = _check_arrays(arrays)
        self.seed = _check_seed(seed)
        self.epoch_offset = _check_epoch(epoch_offset)
        if augment is not None and self.seed is None:
            raise ValueError("augment needs a seed (its generator is seeded by (seed, epoch, batch index)).")
        self.augment = augment
        if drop_remainder is None:
            drop_remainder = self.n >= self.batch_size
        self.drop_remainder = bool(drop_remainder)
        self.per_epoch = num_batches(self.n, self.batch_size, drop_remainder)
        self._epoch, self._pipeline = None, None

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, index = divmod(operator.index(step), self.per_epoch)
        epoch += self.epoch_offset
        if epoch != self._epoch:
            order = _order(self.n, self.seed, epoch)
            self._epoch, self._pipeline = (
                epoch,
                _pipeline(self.data, order, self.batch_size, self.drop_remainder),
            )
        batch = self._pipeline[index]
        if self.augment is not None:
            batch = self.augment(batch, np.random.default_rng((self.seed, epoch, index)))
        return batch
