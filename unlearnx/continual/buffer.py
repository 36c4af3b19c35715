"""A fixed-size replay memory as arrays: one reservoir per task, jit-friendly adds and sampling.

Reservoir sampling keeps, for each task, a uniform random subset of everything offered to it so far: the
n-th example offered (0-based) takes a free slot while n < capacity, else replaces slot r with probability
capacity/(n+1), r ~ U{0..n}. Adds run as a ``lax.scan`` over the batch (exact sequential semantics, under
``jax.jit``); the random slots come from ``key`` folded with the task's count of offered examples.

Task ids are checked when concrete (``ValueError`` outside [0, tasks)); a traced out-of-range id, −1
included, changes nothing (it never wraps around to the last task). Sampling from an empty buffer, or with a
positive count for a task that holds nothing, raises when the counts and the buffer are concrete; under
``jit`` such draws come back as NaN (floating leaves) and −1 (integer leaves), never as zero-filled examples
labelled 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree

__all__ = ["ReplayBuffer", "buffer_add", "buffer_init", "buffer_sample"]


class ReplayBuffer(NamedTuple):
    """Per-task reservoirs of examples; made by :func:`buffer_init`, a pytree (it jits and checkpoints).

    Attributes:
        data: a pytree of arrays ``[tasks, capacity, ...]``; slots past ``stored[t]`` are unused.
        seen: ``[tasks]`` int32, the examples offered to each task so far.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import continual
        >>> buffer = continual.buffer_init(2, capacity=3, example={"x": jnp.zeros(4)})
        >>> buffer = continual.buffer_add(buffer, 1, {"x": jnp.ones((5, 4))}, jax.random.key(0))
        >>> buffer.capacity, buffer.seen.tolist(), buffer.stored.tolist()
        (3, [0, 5], [0, 3])
    """

    data: PyTree
    seen: jax.Array

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[1]

    @property
    def stored(self) -> jax.Array:
        """Valid examples per task, min(seen, capacity)."""
        return jnp.minimum(self.seen, self.capacity)


def buffer_init(num_tasks: int, capacity: int, example: PyTree) -> ReplayBuffer:
    """An empty buffer for ``num_tasks`` tasks of ``capacity`` examples shaped like ``example``
    (one example, no batch axis, e.g. ``{"x": x[0], "y": y[0]}``).

    Args:
        num_tasks: the number of tasks (reservoirs), ≥ 1.
        capacity: the examples each task keeps, ≥ 1.
        example: one example, a pytree of arrays; fixes the shapes and dtypes of the stored leaves.

    Returns:
        A :class:`ReplayBuffer` of zeros with ``seen`` = 0.

    Raises:
        ValueError: ``num_tasks`` or ``capacity`` below 1, or an ``example`` without arrays.
        TypeError: non-integer sizes.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import continual
        >>> buffer = continual.buffer_init(3, 100, {"x": jnp.zeros((28, 28)), "y": jnp.int32(0)})
        >>> buffer.data["x"].shape, buffer.data["y"].dtype, buffer.stored.tolist()
        ((3, 100, 28, 28), dtype('int32'), [0, 0, 0])
    """
    checks.static_int("num_tasks", num_tasks, low=1, high=checks.INT32_MAX)
    checks.static_int("capacity", capacity, low=1, high=checks.INT32_MAX)
    if not jax.tree.leaves(example):
        raise ValueError("example must hold at least one array (one example, no batch axis)")
    data = jax.tree.map(
        lambda leaf: jnp.zeros((num_tasks, capacity, *jnp.shape(leaf)), jnp.asarray(leaf).dtype), example
    )
    return ReplayBuffer(data, jnp.zeros(num_tasks, jnp.int32))


def _check_batch(buffer: ReplayBuffer, batch: PyTree) -> None:
    tree_lib.check_same_structure(buffer.data, batch, names=("buffer.data", "batch"), shapes=False)
    sizes = set()
    for (path, store), leaf in zip(
        tree_lib.leaves_with_paths(buffer.data), jax.tree.leaves(batch), strict=True
    ):
        if np.ndim(leaf) < 1 or tuple(np.shape(leaf)[1:]) != tuple(store.shape[2:]):
            raise ValueError(
                f"batch[{path!r}] must be [batch, *{tuple(store.shape[2:])}] like the buffer's examples, "
                f"got shape {np.shape(leaf)}"
            )
        sizes.add(np.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(f"batch leaves disagree on the batch size: {sorted(sizes)}")


def buffer_add(buffer: ReplayBuffer, task, batch: PyTree, key: jax.Array) -> ReplayBuffer:
    """Offers every example of ``batch`` (leading batch axis) to task ``task``'s reservoir.

    Args:
        buffer: the :class:`ReplayBuffer`.
        task: the task id, a Python int or an int32 scalar (may be traced).
        batch: a pytree like the buffer's examples, with a leading batch axis.
        key: a PRNG key for the reservoir's replacement slots.

    Returns:
        The updated :class:`ReplayBuffer` (the input is not modified).

    Raises:
        ValueError: a concrete ``task`` outside [0, tasks) (a traced one out of range changes nothing), or a
            batch whose structure or example shapes differ from the buffer's.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import continual
        >>> buffer = continual.buffer_init(1, capacity=4, example=jnp.zeros(()))
        >>> buffer = continual.buffer_add(buffer, 0, jnp.arange(1.0, 3.0), jax.random.key(0))
        >>> buffer.data[0].tolist()  # while there is room, examples fill the free slots in order
        [1.0, 2.0, 0.0, 0.0]

    References:
        Vitter, *Random sampling with a reservoir*, ACM TOMS 1985.
    """
    num_tasks = buffer.seen.shape[0]
    if not checks.is_traced(task):
        checks.static_int("task", task, low=0, high=num_tasks - 1)
    _check_batch(buffer, batch)
    capacity = buffer.capacity
    valid = jnp.asarray((task >= 0) & (task < num_tasks))
    task = jnp.where(valid, task, 0)

    def offer(carry, inputs):
        data, seen = carry
        example, example_key = inputs
        n = seen[task]
        slot = jnp.where(n < capacity, n, jax.random.randint(example_key, (), 0, jnp.maximum(n + 1, 1)))
        keep = (slot < capacity) & valid
        data = jax.tree.map(
            lambda store, value: store.at[task, jnp.minimum(slot, capacity - 1)].set(
                jnp.where(keep, value, store[task, jnp.minimum(slot, capacity - 1)])
            ),
            data,
            example,
        )
        return (data, seen.at[task].add(valid.astype(seen.dtype))), None

    size = jax.tree.leaves(batch)[0].shape[0]
    keys = jax.random.split(jax.random.fold_in(key, buffer.seen[task]), size)
    (data, seen), _ = jax.lax.scan(offer, (buffer.data, buffer.seen), (batch, keys))
    return ReplayBuffer(data, seen)


def _check_sample(buffer: ReplayBuffer, counts, size) -> None:
    checks.static_int("size", size, low=0, high=checks.INT32_MAX)
    if np.shape(counts) != buffer.seen.shape:
        raise ValueError(
            f"counts must hold one entry per task, shape {buffer.seen.shape}, got {np.shape(counts)}"
        )
    if checks.is_traced((counts, buffer.seen)):
        return
    checks.check_tree("counts", counts, nonnegative=True)
    wanted, stored = np.asarray(counts, np.float64), np.asarray(buffer.stored)
    empty = np.flatnonzero((wanted > 0) & (stored == 0))
    if empty.size:
        raise ValueError(
            f"counts asks for examples of task {int(empty[0])} (count {float(wanted[empty[0]])!r}), which "
            "holds none: the buffer would return zero-filled examples"
        )
    if size and not np.any(wanted > 0):
        raise ValueError(f"nothing to sample: counts {wanted.tolist()} select no task holding examples")


def _invalid_like(leaf: jax.Array) -> jax.Array:
    fill = jnp.nan if jnp.issubdtype(leaf.dtype, jnp.inexact) else -1
    return jnp.full(leaf.shape, fill, leaf.dtype)


def buffer_sample(buffer: ReplayBuffer, counts, key: jax.Array, size: int) -> PyTree:
    """``size`` examples (static), task t drawn with probability ∝ ``counts[t]`` (e.g. from
    :func:`unlearnx.continual.rehearsal_counts`, padded to all tasks), each uniformly from that task's
    stored examples.

    Args:
        buffer: the :class:`ReplayBuffer`.
        counts: ``[tasks]`` non-negative weights of the tasks (need not sum to 1).
        key: a PRNG key.
        size: the number of examples drawn (static).

    Returns:
        A pytree like the buffer's examples with a leading axis of ``size``.

    Raises:
        ValueError: (concrete counts and buffer) a negative or non-finite count, a positive count for a task
            that holds no example, or no task to draw from; ``counts`` not one entry per task. Under ``jit``
            an empty selection gives NaN / −1 examples instead (see the module docstring).
        TypeError: a non-integer or traced ``size``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import continual
        >>> buffer = continual.buffer_init(2, capacity=4, example=jnp.zeros(()))
        >>> buffer = continual.buffer_add(buffer, 1, jnp.full(3, 7.0), jax.random.key(0))
        >>> continual.buffer_sample(buffer, jnp.array([0.0, 1.0]), jax.random.key(1), 5).tolist()
        [7.0, 7.0, 7.0, 7.0, 7.0]
    """
    _check_sample(buffer, counts, size)
    weights = jnp.asarray(counts, jnp.float32) * (buffer.stored > 0)
    task_key, index_key = jax.random.split(key)
    tasks = jax.random.categorical(task_key, jnp.log(weights), shape=(size,))
    indices = jnp.floor(jax.random.uniform(index_key, (size,)) * buffer.stored[tasks]).astype(jnp.int32)
    drawn = (jnp.sum(weights) > 0) & (buffer.stored[tasks] > 0)
    return jax.tree.map(
        lambda store: jnp.where(
            drawn.reshape((size,) + (1,) * (store.ndim - 2)),
            store[tasks, indices],
            _invalid_like(store[0])[:1],
        ),
        buffer.data,
    )
