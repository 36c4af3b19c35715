"""Jitted training and evaluation over optax, with a resumable epoch loop, progress bar and JSONL log.

Batches are dicts of arrays. The per-example objective covers every supervised baseline in the library:

    ℓᵢ = wᵢ · CE(f(xᵢ), yᵢ)                 (hard labels ``y``; weight ``w`` defaults to 1)
    ℓᵢ = wᵢ · KL(tᵢ ‖ softmax f(xᵢ))        (soft targets ``target_probs`` t, e.g. distillation)

and a step minimises the batch mean of ℓ. A negative weight ascends the loss (gradient ascent on a forget
set), relabelled data gives amnesiac unlearning, and teacher targets give bad-teacher distillation.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from unlearnx import data, parallel
from unlearnx.checkpoint import Checkpointer
from unlearnx.models import Model

PyTree = Any
Batch = Mapping[str, jax.Array]

__all__ = [
    "MetricLogger",
    "TrainState",
    "example_losses",
    "fit",
    "make_train_step",
    "next_token_losses",
    "predict",
]


class TrainState(NamedTuple):
    """Everything a step changes: the step count, the model variables and the optimizer state."""

    step: jax.Array
    variables: PyTree
    opt_state: optax.OptState


def example_losses(logits: jax.Array, batch: Batch) -> jax.Array:
    """Per-example weighted loss ℓᵢ (see the module docstring), shape ``[B]``."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    if "target_probs" in batch:
        targets = batch["target_probs"].astype(jnp.float32)
        safe_log_targets = jnp.log(jnp.where(targets > 0, targets, 1.0))
        losses = jnp.sum(targets * (safe_log_targets - log_probs), axis=-1)
    else:
        losses = -jnp.take_along_axis(log_probs, batch["y"][:, None].astype(jnp.int32), axis=-1)[:, 0]
    if "weight" in batch:
        losses = losses * batch["weight"].astype(jnp.float32)
    return losses


def next_token_losses(logits: jax.Array, batch: Batch) -> jax.Array:
    """Per-sequence mean next-token cross-entropy of a language model, shape ``[B]``.

    With tokens x = ``batch["x"]`` ``[B, T]`` and an optional 0/1 ``batch["mask"]`` m ``[B, T]`` on target
    positions (default all ones):

        ℓ_b = Σ_{t≥1} m_{b,t} · (−log softmax(logits_{b,t−1})[x_{b,t}]) / max(1, Σ_{t≥1} m_{b,t})

    so a sequence without target tokens contributes 0.
    """
    tokens = batch["x"].astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    token_nll = -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    mask = batch["mask"][:, 1:].astype(jnp.float32) if "mask" in batch else jnp.ones_like(token_nll)
    return jnp.sum(token_nll * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


@functools.lru_cache(maxsize=32)
def make_train_step(
    model: Model,
    optimizer: optax.GradientTransformation,
    *,
    loss: Callable[[jax.Array, Batch], jax.Array] = example_losses,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted ``step(state, batch, rng) -> (state, {"loss": mean loss})`` for ``model`` and ``optimizer``.

    The model runs in train mode (BatchNorm batch statistics, dropout from ``rng``); updated batch
    statistics are carried in ``state.variables``. Optimizers that take extra arguments (optax's
    ``GradientTransformationExtraArgs``) receive the parameters as ``params``. Steps are cached per
    ``(model, optimizer, loss)``, so training the same model twice with one optimizer compiles once.
    """

    def objective(params, variables, batch, rng):
        outputs, new_variables = model.apply({**variables, "params": params}, batch["x"], train=True, rng=rng)
        return jnp.mean(loss(outputs, batch)), new_variables

    @jax.jit
    def step(state: TrainState, batch: Batch, rng: jax.Array):
        params = state.variables["params"]
        (value, new_variables), grads = jax.value_and_grad(objective, has_aux=True)(
            params, state.variables, batch, rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_variables = {**new_variables, "params": optax.apply_updates(params, updates)}
        return TrainState(state.step + 1, new_variables, opt_state), {"loss": value}

    return step


def predict(model: Model, variables: PyTree, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Eval-mode outputs of ``model`` on ``x``, computed in batches; returns a host float32 array."""
    if len(x) == 0:
        raise ValueError("predict: x is empty")
    apply = _eval_fn(model)
    outputs = []
    for start in range(0, len(x), batch_size):
        chunk = np.asarray(x[start : start + batch_size])
        # Pad to a power of two so that sets of any size reuse a few compiled shapes.
        padded = min(batch_size, 1 << (len(chunk) - 1).bit_length())
        filler = np.repeat(chunk[:1], padded - len(chunk), axis=0)
        outputs.append(np.asarray(apply(variables, np.concatenate([chunk, filler])))[: len(chunk)])
    return np.concatenate(outputs).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _eval_fn(model: Model) -> Callable:
    """One jitted eval function per model, so repeated evaluation never recompiles."""
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


class MetricLogger:
    """Appends one JSON object per line to ``path`` (JSONL), flushing every record."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else os.fspath(path)
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def log(self, **record: Any) -> None:
        if self.path is None or not parallel.is_main_process():
            return
        clean = {k: (float(v) if isinstance(v, np.generic | jax.Array) else v) for k, v in record.items()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")


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
    checkpoint_seconds: float = 30.0,
    logger: MetricLogger | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch_end: Callable[[int, TrainState, bool], None] | None = None,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
    loss: Callable[[jax.Array, Batch], jax.Array] = example_losses,
    desc: str = "train",
    progress: bool = True,
) -> PyTree:
    """Trains ``variables`` for ``epochs`` passes over ``arrays`` and returns the final variables.

    Data order comes from ``seed`` and the epoch (:func:`unlearnx.data.batches`; the last short batch
    of an epoch is dropped unless the set is smaller than one batch); the step RNG is
    ``fold_in(rng, step)``. With ``checkpoint_dir`` the state is saved at the end of an epoch once
    ``checkpoint_seconds`` have passed since the last save, and after the last epoch; a rerun resumes
    from the last saved epoch and ends in the same variables as an uninterrupted run.

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
      checkpoint_seconds: minimum wall time between checkpoints (0: every epoch).
      logger: receives ``{"phase", "epoch", "step", "loss", "seconds"}`` per epoch.
      mesh: data-parallel mesh (default: all devices).
      on_epoch_end: called as ``on_epoch_end(epoch, state, saved)`` after each epoch, ``saved`` telling
        whether that epoch was checkpointed.
      augment: host-side batch transform ``augment(batch, generator)`` (e.g.
        :func:`unlearnx.data.crop_and_flip`); the generator is seeded by ``(seed, epoch, batch index)`` so
        augmentation is reproducible and resumable.
      loss: per-example objective ``loss(outputs, batch) -> [B]`` (:func:`example_losses` for classifiers,
        :func:`next_token_losses` for language models).
      desc: label of the progress bar and log records.
      progress: show a progress bar.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"fit needs epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    mesh = parallel.data_mesh() if mesh is None else mesh
    step_fn = make_train_step(model, optimizer, loss=loss)
    state = TrainState(jnp.asarray(0, jnp.int32), variables, optimizer.init(variables["params"]))
    state = parallel.replicate(state, mesh)
    start_epoch = 0
    checkpointer = None if checkpoint_dir is None else Checkpointer(checkpoint_dir)
    if checkpointer is not None and checkpointer.latest_step() is not None:
        start_epoch = checkpointer.latest_step()
        state = checkpointer.restore(state)
    drop_remainder = len(next(iter(arrays.values()))) >= batch_size
    last_save = time.perf_counter()
    bar = tqdm(range(start_epoch, epochs), desc=desc, disable=None if progress else True, leave=False)
    for epoch in bar:
        started = time.perf_counter()
        losses = []
        epoch_batches = data.batches(
            arrays, batch_size, seed=seed, epoch=epoch, drop_remainder=drop_remainder
        )
        for index, batch in enumerate(epoch_batches):
            if augment is not None:
                batch = augment(batch, np.random.default_rng((seed, epoch, index)))
            batch = parallel.shard_batch(parallel.process_share(batch), mesh)
            state, metrics = step_fn(state, batch, jax.random.fold_in(rng, state.step))
            losses.append(metrics["loss"])
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if logger is not None:
            logger.log(
                phase=desc,
                epoch=epoch + 1,
                step=int(state.step),
                loss=mean_loss,
                seconds=time.perf_counter() - started,
            )
        saved = checkpointer is not None and (
            epoch + 1 == epochs or time.perf_counter() - last_save >= checkpoint_seconds
        )
        if saved:
            checkpointer.save(epoch + 1, state)
            last_save = time.perf_counter()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, state, saved)
    if checkpointer is not None:
        checkpointer.close()
    return state.variables
