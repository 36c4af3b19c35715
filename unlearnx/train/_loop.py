"""The training engine: one sharded, checkpointed, preemptible loop over any step function.

Every ``interval`` steps (and after the last) the loop closes a *record*: the interval's mean of each
metric, ``phase`` (= ``name``), ``step``, ``seconds``, and whatever ``on_interval(step, state,
step_metrics)`` returns (``step_metrics`` stacks the interval's per-step metrics); a record with a true
``"done"`` field (an early stop: a target reached) ends the loop there, saved, and a rerun returns at
once. Records go to ``logger`` (JSONL + TensorBoard) and to the returned history. At a record the loop
offers orbax's save policy a save; the last step is always saved, and so is the step at which a stop is
requested (SIGTERM, :func:`request_stop`, :func:`stop_at`), after which :class:`Preempted` is raised. A
checkpoint holds the whole state, the history and the unfinished interval's metrics, so a rerun with the
same arguments restores the newest step and ends in bit-identical state and history.

Sharding: the state is replicated over ``mesh`` (default: every device), or with ``shard_params``
each leaf is split along its largest dimension that the device count divides (FSDP-style, for models
that do not fit one chip); each batch is split along ``batch_axis`` over the mesh, every process
passing the same global host batch (:func:`unlearnx.parallel.process_share` keeps its share). A batch
whose size the device count does not divide loses its last examples (with one warning per loop), the
same way on one host and on many; with one device nothing is ever dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from unlearnx import parallel
from unlearnx.checkpoint import Checkpointer, interval_policy
from unlearnx.train._preemption import Preempted, stop_requested
from unlearnx.train._writers import MetricLogger, plain

State = TypeVar("State")
Batch = Mapping[str, Any]
Metrics = Mapping[str, jax.Array]

__all__ = ["loop"]

_DEFAULT_POLICY = object()


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"loop: {name} must be an int >= {low}, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=32)
def _pinned(step_fn: Callable, leaves: tuple, treedef: Any) -> Callable:
    """``step_fn`` jitted so that its new state keeps the given (parameter-sharded) shardings."""
    shardings = jax.tree.unflatten(treedef, leaves)

    def step(state, batch):
        new_state, metrics = step_fn(state, batch)
        return jax.lax.with_sharding_constraint(new_state, shardings), metrics

    return jax.jit(step)


def _encode_pending(pending: dict[str, list]) -> dict[str, Any]:
    """The metrics of an unfinished interval as JSON (float32/int values survive a float64 round trip)."""
    encoded = {}
    for key, values in pending.items():
        stacked = np.asarray(jnp.stack(values))
        encoded[key] = {"dtype": str(stacked.dtype), "values": stacked.tolist()}
    return encoded


def _decode_pending(encoded: Mapping[str, Any]) -> dict[str, list]:
    return {
        key: list(jnp.asarray(np.asarray(item["values"], dtype=item["dtype"])))
        for key, item in encoded.items()
    }


def _restore(checkpointer: Checkpointer, state, num_steps: int):
    """(start step, state, history, pending metrics) from the newest checkpoint (none: step 0)."""
    steps = checkpointer.all_steps()
    if not steps:
        return 0, state, [], {}
    if steps[-1] > num_steps:  # a longer run's schedule may differ: resuming from it would not be exact
        raise ValueError(
            f"loop: {checkpointer.directory} holds steps {steps}, past num_steps={num_steps}; "
            "it belongs to a longer run (use another checkpoint_dir)"
        )
    latest = checkpointer.restore_latest(state)
    if latest is None:  # every step was damaged (and deleted, with a warning): start over
        return 0, state, [], {}
    step, restored, record = latest
    return step, restored, list(record["history"]), _decode_pending(record["pending"])


def _even(batch: Batch, devices: int, axis: int, name: str, warned: list) -> Batch:
    """``batch`` cut to the largest multiple of ``devices`` examples along ``axis``: a short batch is dropped
    in part, never replicated (each device would compute all of it) and never a crash on many hosts."""
    size = np.shape(jax.tree.leaves(batch)[0])[axis]
    usable = size - size % devices
    if usable == size:
        return batch
    if usable == 0:
        raise ValueError(
            f"loop {name!r}: a batch of {size} examples cannot be split over {devices} devices; "
            f"use batches of at least {devices} examples"
        )
    if not warned:
        warned.append(True)
        warnings.warn(
            f"loop {name!r}: a batch of {size} examples does not split over {devices} devices; its last "
            f"{size - usable} examples are dropped (said once per loop)",
            RuntimeWarning,
            stacklevel=3,
        )
    return jax.tree.map(lambda leaf: np.take(np.asarray(leaf), np.arange(usable), axis=axis), batch)


def _summarise(pending: dict[str, list]) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Stacked per-step metrics and their means over the interval (plain floats or lists)."""
    stacked = {key: jnp.stack(values) for key, values in pending.items()}
    means = {}
    for key, values in stacked.items():
        mean = np.asarray(jnp.mean(values, axis=0))
        means[key] = mean.item() if mean.ndim == 0 else mean.tolist()
    return stacked, means


def loop(
    step_fn: Callable[[State, Batch], tuple[State, Metrics]],
    state: State,
    batch_at: Callable[[int], Batch],
    num_steps: int,
    *,
    name: str = "train",
    interval: int = 1,
    on_interval: Callable[[int, State, dict[str, jax.Array]], Mapping[str, Any] | None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_policy: Any = _DEFAULT_POLICY,
    logger: MetricLogger | None = None,
    mesh: Mesh | None = None,
    shard_params: bool = False,
    batch_axis: int = 0,
    progress: bool = True,
) -> tuple[State, list[dict[str, Any]]]:
    """Runs ``state, metrics = step_fn(state, batch_at(i))`` for i = 0 … ``num_steps`` − 1, data-parallel,
    checkpointed, resumable and preemptible.

    Records, checkpoints, resume, stops and sharding work as the module docstring describes.

    Args:
        step_fn: ``(state, batch) -> (state, {name: scalar or per-run array})``, usually jitted.
        state: any pytree (e.g. :class:`TrainState`); RNG belongs in it (fold in the step inside ``step_fn``).
        batch_at: the host batch of step ``i``; must be a deterministic function of ``i`` for exact resume.
        num_steps: total steps of this loop (a resumed loop runs only the rest).
        name: the loop's name in records, progress bar, :func:`stop_at` and :class:`Preempted`.
        interval: steps per record (an epoch, an evaluation period).
        on_interval: extra record fields from ``(step, state, step_metrics)``, e.g. an evaluation; include
            ``"done": True`` to stop early.
        checkpoint_dir: where to checkpoint (``None``: no checkpoints; a stop request then loses progress).
        checkpoint_policy: orbax ``SaveDecisionPolicy`` consulted at each record (default: at most once a
            minute, :func:`unlearnx.checkpoint.interval_policy`; ``None``: only the final and stop saves).
        logger: where records are written (resumed loops first drop their own records past the restored step).
        mesh: data-parallel mesh (default: every device of every process).
        shard_params: shard the state's leaves over the mesh instead of replicating them.
        batch_axis: the axis of every batch leaf that holds examples (1 for batches of vmapped runs).
        progress: show a progress bar.

    Returns:
        ``(state, history)``: the final state and the list of records.

    Raises:
        ValueError: for a negative ``num_steps``, an ``interval`` < 1, or a checkpoint past ``num_steps``.
        Preempted: after saving, when a stop was requested.

    Examples:
        A running sum: step i adds its batch of eight i's (8i); each record holds the mean of its two steps'
        sums:

        >>> import jax.numpy as jnp, numpy as np
        >>> def step(state, batch):
        ...     return state + batch["x"].sum(), {"loss": batch["x"].sum()}
        >>> batch_at = lambda i: {"x": np.full(8, float(i))}
        >>> state, history = loop(step, jnp.float32(0.0), batch_at, 4, interval=2, progress=False)
        >>> float(state), [(record["step"], record["loss"]) for record in history]  # 0 + 8 + 16 + 24
        (48.0, [(2, 4.0), (4, 20.0)])

        For supervised training, ``step = train.make_train_step(model, optimizer)``, ``state =
        train.TrainState.create(variables, optimizer, rng)`` and ``batch_at = data.EpochBatches(arrays, 64,
        seed=0)`` (or :func:`fit`, which does this).
    """
    num_steps = _check_count("num_steps", num_steps, 0)
    interval = _check_count("interval", interval, 1)
    mesh = parallel.data_mesh() if mesh is None else mesh
    state, step_fn = _place(state, step_fn, mesh, shard_params)
    if checkpoint_policy is _DEFAULT_POLICY:
        checkpoint_policy = interval_policy(seconds=60)
    checkpointer = None
    if checkpoint_dir is not None:
        checkpointer = Checkpointer(checkpoint_dir, policy=checkpoint_policy)
    try:
        start, history, pending = 0, [], {}
        if checkpointer is not None:
            start, state, history, pending = _restore(checkpointer, state, num_steps)
            if logger is not None:  # records a killed run wrote past its last checkpoint
                logger.rewind(name, start)
        if history and history[-1].get("done"):  # it had already stopped early: nothing left to run
            start = num_steps
        run = _Run(step_fn, batch_at, num_steps, name, interval, on_interval, checkpointer, logger, mesh,
                   batch_axis)  # fmt: skip
        return run(state, start, history, pending, progress)
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _place(state, step_fn: Callable, mesh: Mesh, shard_params: bool):
    """The state replicated over ``mesh`` (or its leaves sharded, with the step pinned to that layout)."""
    if not shard_params:
        return parallel.replicate(state, mesh), step_fn
    shardings = parallel.param_shardings(state, mesh)
    leaves, treedef = jax.tree.flatten(shardings)
    return jax.device_put(state, shardings), _pinned(step_fn, tuple(leaves), treedef)


@dataclasses.dataclass(frozen=True)
class _Run:
    """The steps of one :func:`loop` call after its state is placed and restored."""

    step_fn: Callable
    batch_at: Callable[[int], Batch]
    num_steps: int
    name: str
    interval: int
    on_interval: Callable | None
    checkpointer: Checkpointer | None
    logger: MetricLogger | None
    mesh: Mesh
    batch_axis: int

    def batch(self, index: int, warned: list) -> Batch:
        devices = self.mesh.devices.size
        batch = _even(self.batch_at(index), devices, self.batch_axis, self.name, warned)
        if devices > 1 or jax.process_count() > 1:  # one device takes host arrays directly (cheaper)
            batch = parallel.process_share(batch, self.batch_axis)
            batch = parallel.shard_batch(batch, self.mesh, self.batch_axis)
        return batch

    def record(self, ran: int, state, pending: dict, started: float) -> dict[str, Any]:
        stacked, means = _summarise(pending)
        record = {"phase": self.name, "step": ran, **means, "seconds": time.perf_counter() - started}
        if self.on_interval is not None:
            record.update(plain(dict(self.on_interval(ran, state, stacked) or {})))
        if self.logger is not None:
            self.logger.log(**record)
        return record

    def __call__(self, state, start: int, history: list, pending: dict, progress: bool):
        bar = tqdm(
            range(start, self.num_steps), desc=self.name, disable=None if progress else True, leave=False
        )
        started, warned, checkpointer = time.perf_counter(), [], self.checkpointer
        for index in bar:
            state, metrics = parallel.throttle(self.step_fn(state, self.batch(index, warned)), index + 1)
            for key, value in metrics.items():
                pending.setdefault(key, []).append(value)
            ran = index + 1
            closing = ran % self.interval == 0 or ran == self.num_steps
            if closing:
                history.append(self.record(ran, state, pending, started))
                pending, started = {}, time.perf_counter()
                if "loss" in history[-1] and np.ndim(history[-1]["loss"]) == 0:
                    bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            finished = ran == self.num_steps or (closing and bool(history[-1].get("done")))
            stop = stop_requested(self.name, ran)
            if checkpointer is not None and (stop or finished or (closing and checkpointer.should_save(ran))):
                checkpointer.save(ran, state, {"history": history, "pending": _encode_pending(pending)})
            if finished:
                break
            if stop:
                raise Preempted(self.name, ran, None if checkpointer is None else checkpointer.directory)
        return state, history
