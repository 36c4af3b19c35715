"""Supervised training in one call: :func:`unlearnx.train.loop` over epochs of in-memory arrays.

Each step minimises the batch mean of ``loss`` (default: the weighted cross-entropy / soft-target KL of
:func:`example_losses`). Data order comes from ``seed`` and the epoch
(:class:`unlearnx.data.EpochBatches`:
the last short batch of an epoch is dropped unless the set is smaller than one batch); the step RNG is
``fold_in(rng, step)``. Training runs on :func:`unlearnx.train.loop` with one record per epoch
(``phase``, ``epoch``, ``step``, mean ``loss``, ``seconds`` and what ``on_epoch_end`` adds), so it is
data-parallel, checkpointed, resumable bit for bit and preemptible.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from unlearnx import _validation as checks
from unlearnx import data
from unlearnx.checkpoint import interval_policy
from unlearnx.models import Model
from unlearnx.train._loop import loop
from unlearnx.train._step import Batch, PyTree, TrainState, example_losses, make_train_step
from unlearnx.train._writers import MetricLogger

__all__ = ["fit"]


def _epoch_record(per_epoch: int, on_epoch_end: Callable | None, step: int, state: TrainState, _) -> dict:
    """The epoch number and whatever ``on_epoch_end(epoch, state)`` adds, for the loop's record."""
    record = {"epoch": step // per_epoch}
    if on_epoch_end is not None:
        record.update(on_epoch_end(step // per_epoch, state) or {})
    return record


def _check_inputs(
    model: Model, variables: PyTree, arrays: Mapping, loss: Callable, epochs, batch_size
) -> None:
    """Clear errors before any step: counts are ints in range, the variables hold params, the arrays hold what
    ``loss`` reads, and class labels lie in [0, C) for the model's C outputs (else they train silently)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit needs an int epochs >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit needs an int batch_size >= 1, got {batch_size!r}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        found = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"fit: variables must be a dict with 'params', got {found}")
    if not isinstance(arrays, Mapping) or "x" not in arrays:
        found = sorted(arrays) if isinstance(arrays, Mapping) else type(arrays).__name__
        raise ValueError(f"fit: arrays must hold 'x' (inputs), got {found}")
    if loss is example_losses and "target_probs" not in arrays:
        if "y" not in arrays:
            raise ValueError(f"fit: arrays must hold 'y' (labels) or 'target_probs', got {sorted(arrays)}")
        outputs = jax.eval_shape(lambda v, x: model.apply(v, x), variables, np.asarray(arrays["x"][:1]))
        checks.check_ids("arrays['y']", np.asarray(arrays["y"]), outputs.shape[-1], what="class labels")


def fit(
    model: Model,
    variables: PyTree,
    arrays: Mapping[str, np.ndarray],
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    rng: jax.Array,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_seconds: float | None = 60.0,
    logger: MetricLogger | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch_end: Callable[[int, TrainState], Mapping[str, Any] | None] | None = None,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
    loss: Callable[[jax.Array, Batch], jax.Array] = example_losses,
    desc: str = "train",
    progress: bool = True,
    shard_params: bool = False,
) -> tuple[PyTree, list[dict[str, Any]]]:
    """Trains ``variables`` for ``epochs`` passes over ``arrays``; returns ``(variables, history)``.

    Args:
        model: the pure model.
        variables: initial variables (``{"params": ..., ["batch_stats": ...]}``).
        arrays: training examples, ``{"x": [N, ...], "y": [N], ...}`` (see :func:`example_losses`).
        optimizer: an optax transformation.
        epochs: number of passes (0 returns ``variables`` unchanged).
        batch_size: examples per step.
        rng: key for stochastic layers.
        seed: data-order seed.
        checkpoint_dir: where to checkpoint (``None``: no checkpoints).
        checkpoint_seconds: minimum wall time between end-of-epoch checkpoints (0: every epoch; ``None``: only
            the last epoch). The last epoch is always saved, so a rerun of a finished fit returns at once.
        logger: receives one record per epoch (JSONL + TensorBoard).
        mesh: data-parallel mesh (default: all devices).
        on_epoch_end: ``on_epoch_end(epoch, state) -> dict | None``; the dict joins the epoch's record (and so
            the checkpointed history).
        augment: host-side batch transform ``augment(batch, generator)`` (e.g.
            :func:`unlearnx.data.crop_and_flip`), seeded by ``(seed, epoch, batch index)``.
        loss: per-example objective ``loss(outputs, batch) -> [B]`` (:func:`example_losses` for classifiers,
            :func:`next_token_losses` for language models).
        desc: the loop's name (progress bar, records, :func:`stop_at`).
        progress: show a progress bar.
        shard_params: shard parameters and optimizer state over the mesh instead of replicating them.

    Returns:
        ``(variables, history)``: the trained variables and the per-epoch records.

    Raises:
        ValueError: for ``epochs < 0``, ``batch_size < 1``, empty ``arrays``, variables without ``params``,
            arrays without ``x`` (or ``y``/``target_probs`` for the default loss), or labels outside [0, C).
        Preempted: after a checkpoint, when a stop was requested.

    Examples:
        Sixteen examples in batches of 8 are 2 steps per epoch, so 3 epochs end at steps 2, 4 and 6:

        >>> import jax, numpy as np, optax
        >>> from unlearnx import models
        >>> model = models.mlp((4,), 2, hidden=(8,))
        >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
        >>> arrays = {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}
        >>> variables, history = fit(model, model.init(jax.random.key(0)), arrays, optimizer=optax.adam(1e-2),
        ...                          epochs=3, batch_size=8, rng=jax.random.key(1), progress=False)
        >>> [(record["epoch"], record["step"]) for record in history]
        [(1, 2), (2, 4), (3, 6)]
        >>> history[-1]["loss"] < history[0]["loss"]  # the epoch-mean loss fell
        True
    """
    _check_inputs(model, variables, arrays, loss, epochs, batch_size)
    sampler = data.EpochBatches(arrays, batch_size, seed=seed, augment=augment)
    per_epoch = sampler.per_epoch
    state, history = loop(
        make_train_step(model, optimizer, loss=loss),
        TrainState.create(variables, optimizer, rng),
        sampler,
        epochs * per_epoch,
        name=desc,
        interval=per_epoch,
        on_interval=functools.partial(_epoch_record, per_epoch, on_epoch_end),
        checkpoint_dir=checkpoint_dir,
        checkpoint_policy=interval_policy(seconds=checkpoint_seconds),
        logger=logger,
        mesh=mesh,
        shard_params=shard_params,
        progress=progress,
    )
    return state.variables, history
