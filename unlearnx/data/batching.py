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


def batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_remainder: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterates over one epoch of minibatches.

    Grain produces batches of example indices (shuffled when ``seed`` is given) and each batch
    is gathered from every array with NumPy fancy indexing. The order is a deterministic
    function of ``(seed, epoch)``: reusing both repeats it, changing ``epoch`` gives a new
    permutation.

    Args:
        arrays: Arrays sharing their leading (example) dimension, e.g. ``Dataset.arrays()``.
        batch_size: Positive number of examples per batch.
        seed: Non-negative shuffle seed, or None to keep the original order.
        epoch: Non-negative epoch number, mixed into the shuffle seed.
        drop_remainder: Whether to drop the last batch when it is smaller than ``batch_size``.

    Returns:
        An iterator of dicts with the same keys as ``arrays`` and batch-sized leading
        dimensions. Arguments are validated when this function is called, not on first use.

    Raises:
        ValueError: If ``arrays`` is empty or holds no examples, if the arrays differ in length,
            or if ``batch_size``, ``seed`` or ``epoch`` is invalid.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> arrays = {"x": np.arange(5.0), "y": np.arange(5)}
        >>> [batch["y"].tolist() for batch in data.batches(arrays, 2)]
        [[0, 1], [2, 3], [4]]
    """
    size = _check_batch_size(batch_size)
    data, n = _check_arrays(arrays)
    epoch = _check_epoch(epoch)
    import grain  # Lazy: importing Grain takes most of a second.

    order = _order(n, _check_seed(seed), epoch)
    # Grain serves whole index batches (cut with NumPy), so no per-example Python work is done.
    stop = n - n % size if drop_remainder else n
    index_ds = grain.MapDataset.source([order[start : start + size] for start in range(0, stop, size)])

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(index_ds)):
            idx = index_ds[i]
            yield {key: value[idx] for key, value in data.items()}

    return generate()


class EpochBatches:
    """Random access to the batches of :func:`batches` over successive epochs: ``sampler(step)`` is batch
    ``step mod per_epoch`` of epoch ``epoch_offset + step // per_epoch``, exactly as :func:`batches` yields
    it, so a training loop resumed at any step sees the same data (:func:`unlearnx.train.loop`).

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

    Example::

        sampler = EpochBatches({"x": x, "y": y}, 64, seed=0)
        first = sampler(0)                    # == next(batches(arrays, 64, seed=0, drop_remainder=True))
        steps = 10 * sampler.per_epoch        # ten epochs
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
        self.per_epoch = num_batches(self.n, self.batch_size, drop_remainder)
        self._epoch, self._order = None, None

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, index = divmod(operator.index(step), self.per_epoch)
        epoch += self.epoch_offset
        if epoch != self._epoch:
            self._epoch, self._order = epoch, _order(self.n, self.seed, epoch)
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = {key: value[chosen] for key, value in self.data.items()}
        if self.augment is not None:
            batch = self.augment(batch, np.random.default_rng((self.seed, epoch, index)))
        return batch
