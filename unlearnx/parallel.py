"""Data parallelism over all devices with ``jax.sharding`` (no ``pmap``).

Code is written for one device under ``jax.jit``; these helpers place batches sharded along a ``"data"``
mesh axis and parameters replicated, and XLA inserts the cross-device reductions. The same code runs on
one CPU, on 8 simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU
host, or on a multi-host TPU pod slice after :func:`initialize_distributed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unlearnx._typing import PyTree

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "data_mesh",
    "initialize_distributed",
    "is_main_process",
    "param_shardings",
    "process_share",
    "replicate",
    "shard_batch",
    "throttle",
]

#: How many programs a loop of ours dispatches before it waits for the devices to catch up (see
#: :func:`throttle`).
MAX_IN_FLIGHT = 8


def initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when running as one process of a multi-host job.

    A multi-host job is recognised by ``JAX_COORDINATOR_ADDRESS`` or by a TPU pod's worker list
    (``TPU_WORKER_HOSTNAMES`` with more than one host). Call it once at entrypoint start, before any other
    JAX call.

    Returns:
        Whether it initialised (``False`` on a single host, where nothing is to be done).

    Examples:
        >>> initialize_distributed()  # one process: no coordinator, no TPU worker list
        False
    """
    workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or "," in workers:
        jax.distributed.initialize()
        return True
    return False


def is_main_process() -> bool:
    """Whether this is process 0, the one that should log and write reports.

    Returns:
        ``jax.process_index() == 0``.

    Examples:
        >>> is_main_process()
        True
    """
    return jax.process_index() == 0


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over ``devices``.

    Args:
        devices: the devices, in mesh order (default: every device of every process, ``jax.devices()``).
        axis_name: the mesh axis's name.

    Returns:
        A ``jax.sharding.Mesh`` of shape ``(len(devices),)``.

    Raises:
        ValueError: ``devices`` is empty.

    Examples:
        >>> import jax
        >>> mesh = data_mesh(jax.devices()[:1])
        >>> mesh.axis_names, mesh.devices.shape
        (('data',), (1,))
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of ``tree`` fully replicated on ``mesh``.

    Args:
        tree: a pytree of arrays.
        mesh: the mesh to replicate over.

    Returns:
        ``tree`` with every leaf a ``jax.Array`` holding a full copy on every device of ``mesh``.

    Examples:
        >>> import jax, numpy as np
        >>> params = replicate({"w": np.ones(3)}, data_mesh(jax.devices()[:1]))
        >>> params["w"].sharding.is_fully_replicated
        True
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def param_shardings(tree: PyTree, mesh: Mesh) -> PyTree:
    """Per-leaf shardings for FSDP-style parameter sharding.

    Each leaf is split over ``mesh``'s first axis along its largest dimension that the axis size divides;
    leaves with no such dimension (and every leaf on a one-device mesh) are replicated.

    Args:
        tree: a pytree of arrays (or of shaped objects).
        mesh: the mesh whose first axis splits the leaves.

    Returns:
        A tree with ``tree``'s structure whose leaves are ``NamedSharding`` objects.

    Examples:
        >>> import jax, numpy as np
        >>> from jax.sharding import Mesh, PartitionSpec
        >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
        >>> param_shardings({"w": np.zeros((4, 6))}, mesh)["w"].spec == PartitionSpec()  # one device
        True
    """
    axis, count = mesh.axis_names[0], mesh.devices.size

    def sharding(leaf):
        shape = np.shape(leaf)
        dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d]) if shape[d] % count == 0]
        if not dims or count == 1:
            return NamedSharding(mesh, PartitionSpec())
        spec = [None] * len(shape)
        spec[dims[0]] = axis
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(sharding, tree)


def process_share(batch: PyTree, axis: int = 0) -> PyTree:
    """This process's contiguous share of a global host batch that every process loaded identically.

    Process i of P keeps rows [i·B/P, (i+1)·B/P) of ``axis``; the shares, concatenated in process order,
    are the global batch that :func:`shard_batch` assembles. With one process the batch is returned as is.

    Args:
        batch: the global host batch, a pytree of arrays.
        axis: the example axis.

    Returns:
        This process's rows of every leaf.

    Raises:
        ValueError: the batch size is not a multiple of the number of processes.

    Examples:
        >>> import numpy as np
        >>> process_share({"x": np.arange(4)})["x"]  # one process keeps every row
        array([0, 1, 2, 3])
    """
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    size = np.shape(jax.tree.leaves(batch)[0])[axis]
    if size % count:
        raise ValueError(f"a global batch of {size} cannot be split evenly over {count} processes")
    share = size // count
    return jax.tree.map(
        lambda leaf: np.take(leaf, np.arange(index * share, (index + 1) * share), axis=axis), batch
    )


def shard_batch(batch: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
    """Places a host batch on ``mesh`` split along ``axis`` (the example axis; 0 by default).

    Each process passes its own share of the global batch (:func:`process_share`; the whole batch when
    there is one process). On one process a batch not divisible by the number of devices (a short last
    batch) is replicated instead, which gives the same result at some extra cost; across processes that
    would mix different data, so it is an error.

    Args:
        batch: this process's share of the batch, a pytree of arrays with one example-axis size.
        mesh: the mesh whose first axis splits the batch.
        axis: the example axis.

    Returns:
        ``batch`` as global arrays sharded along ``axis`` (replicated if the size does not split).

    Raises:
        ValueError: leaves disagree on the batch size, or (several processes) it does not split over the
            local devices.

    Examples:
        >>> import jax, numpy as np
        >>> from jax.sharding import PartitionSpec
        >>> batch = shard_batch({"x": np.arange(8.0).reshape(4, 2)}, data_mesh(jax.devices()[:1]))
        >>> batch["x"].sharding.spec == PartitionSpec("data"), float(batch["x"].sum())
        (True, 28.0)
    """
    name = mesh.axis_names[0]
    local_devices = mesh.local_mesh.devices.size
    sizes = {np.shape(leaf)[axis] for leaf in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"batch leaves disagree on the leading (batch) size: {sorted(sizes)}")
    size = sizes.pop()
    if size % local_devices and jax.process_count() > 1:
        raise ValueError(f"a per-process batch of {size} does not split over {local_devices} local devices")
    spec = PartitionSpec(*([None] * axis), name) if size % local_devices == 0 else PartitionSpec()
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:  # one process holds the global batch: a plain (much cheaper) device_put
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), batch)


def throttle(tree: PyTree, count: int, every: int = MAX_IN_FLIGHT) -> PyTree:
    """Waits for ``tree`` on every ``every``-th call of a dispatch loop, so that at most ``every`` programs
    are ever queued ahead of the host; returns ``tree``.

    JAX dispatches asynchronously, so a Python loop of jitted steps can run far ahead of the devices. On
    XLA:CPU with several devices in one process (``--xla_force_host_platform_device_count=8``) that
    deadlocks: the client runs every device's share of a program on one pool of ``max(cores, devices)``
    threads and admits at most 32 programs in flight per device. Once a slow (loaded) machine falls 32
    programs behind, the launches of new programs block pool threads waiting for a slot, while the oldest
    program's all-reduce needs all ``devices`` threads at once to finish: it never does (seen here within
    50 steps of a sharded training loop on 2 cores, as "Expected 8 threads to join the rendezvous").
    Waiting every 8 programs keeps far below that limit and costs accelerators one host dispatch latency
    per 8 steps. ``PJRT_NPROC=16`` in the environment (a pool of 16 threads) avoids it too, for loops
    written without this call.

    Args:
        tree: outputs of the program just dispatched (arrays; other leaves are ignored).
        count: how many programs the loop has dispatched so far (1 after the first).
        every: the most programs to leave in flight.

    Returns:
        ``tree``, unchanged (ready when ``count`` is a multiple of ``every``).

    Raises:
        ValueError: ``every`` is not a positive int.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> step = jax.jit(lambda x: x + 1)
        >>> x = jnp.zeros(())
        >>> for i in range(1, 17):  # waits after the 8th and the 16th dispatch
        ...     x = throttle(step(x), i)
        >>> float(x)
        16.0
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"throttle: every must be a positive int, got {every!r}")
    if count % every == 0:
        jax.block_until_ready(tree)
    return tree
