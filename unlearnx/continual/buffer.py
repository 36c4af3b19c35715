"""A fixed-size replay memory as arrays: one reservoir per task, jit-friendly adds and sampling.

Reservoir sampling keeps, for each task, a uniform random subset of everything offered to it so far: the
n-th example offered (0-based) takes a free slot while n < capacity, else replaces slot r with probability
capacity/(n+1), r ~ U{0..n}. Adds run as a ``lax.scan`` over the batch (exact sequential semantics, under
``jax.jit``); the random slots come from ``key`` folded with the task's count of offered examples.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["ReplayBuffer", "buffer_add", "buffer_init", "buffer_sample"]


class ReplayBuffer(NamedTuple):
    """``data``: a pytree of arrays ``[tasks, capacity, ...]``; ``seen``: examples offered per task."""

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
    (one example, no batch axis, e.g. ``{"x": x[0], "y": y[0]}``)."""
    if num_tasks < 1 or capacity < 1:
        raise ValueError(f"num_tasks and capacity must be positive, got {num_tasks} and {capacity}")
    data = jax.tree.map(
        lambda leaf: jnp.zeros((num_tasks, capacity, *jnp.shape(leaf)), jnp.asarray(leaf).dtype), example
    )
    return ReplayBuffer(data, jnp.zeros(num_tasks, jnp.int32))


def buffer_add(buffer: ReplayBuffer, task, batch: PyTree, key: jax.Array) -> ReplayBuffer:
    """Offers every example of ``batch`` (leading batch axis) to task ``task``'s reservoir."""
    capacity = buffer.capacity

    def offer(carry, inputs):
        data, seen = carry
        example, example_key = inputs
        n = seen[task]
        slot = jnp.where(n < capacity, n, jax.random.randint(example_key, (), 0, jnp.maximum(n + 1, 1)))
        keep = slot < capacity
        data = jax.tree.map(
            lambda store, value: store.at[task, jnp.minimum(slot, capacity - 1)].set(
                jnp.where(keep, value, store[task, jnp.minimum(slot, capacity - 1)])
            ),
            data,
            example,
        )
        return (data, seen.at[task].add(1)), None

    size = jax.tree.leaves(batch)[0].shape[0]
    keys = jax.random.split(jax.random.fold_in(key, buffer.seen[task]), size)
    (data, seen), _ = jax.lax.scan(offer, (buffer.data, buffer.seen), (batch, keys))
    return ReplayBuffer(data, seen)


def buffer_sample(buffer: ReplayBuffer, counts, key: jax.Array, size: int) -> PyTree:
    """``size`` examples (static), task t drawn with probability ∝ ``counts[t]`` (e.g. from
    :func:`unlearnx.continual.rehearsal_counts`, padded to all tasks), each uniformly from that task's
    stored examples. Tasks with nothing stored are never drawn."""
    weights = jnp.asarray(counts, jnp.float32) * (buffer.stored > 0)
    task_key, index_key = jax.random.split(key)
    tasks = jax.random.categorical(task_key, jnp.log(weights), shape=(size,))
    indices = jnp.floor(jax.random.uniform(index_key, (size,)) * buffer.stored[tasks]).astype(jnp.int32)
    return jax.tree.map(lambda store: store[tasks, indices], buffer.data)
