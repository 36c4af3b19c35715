"""Jitted training and evaluation steps over optax, and the per-example objectives they minimise.

Batches are dicts of arrays. The per-example objective covers every supervised baseline in the library:

    ℓᵢ = wᵢ · CE(f(xᵢ), yᵢ)                 (hard labels ``y``; weight ``w`` defaults to 1)
    ℓᵢ = wᵢ · KL(tᵢ ‖ softmax f(xᵢ))        (soft targets ``target_probs`` t, e.g. distillation)

and a step minimises the batch mean of ℓ. A negative weight ascends the loss (gradient ascent on a forget
set), relabelled data gives amnesiac unlearning, and teacher targets give bad-teacher distillation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import _losses, sparse
from unlearnx import _validation as checks
from unlearnx._typing import PyTree
from unlearnx.models import Model

Batch = Mapping[str, jax.Array]

__all__ = ["TrainState", "example_losses", "make_train_step", "next_token_losses", "predict"]


class TrainState(NamedTuple):
    """Everything a training step reads and changes, checkpointed whole by :func:`unlearnx.train.loop`.

    Attributes:
        step: int32 step count; a step's randomness is ``fold_in(rng, step)``.
        variables: the model variables (``{"params": ..., ["batch_stats": ...]}``).
        opt_state: the optimizer state (penalty anchors, Fisher, SI integrals and sparse masks live here, in
            their optax transforms' states).
        rng: the run's key (never split in place: steps fold in their step number).
        extra: any other state a custom step carries (e.g. an EMA of the parameters); ``None`` by default.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> state = TrainState.create({"params": {"w": jnp.zeros(2)}}, optax.sgd(0.1), jax.random.key(0))
        >>> int(state.step), state.extra is None
        (0, True)
    """

    step: jax.Array
    variables: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    extra: PyTree = None

    @classmethod
    def create(
        cls, variables: PyTree, optimizer: optax.GradientTransformation, rng: jax.Array, extra: PyTree = None
    ) -> TrainState:
        """Step 0 with ``optimizer`` initialised on ``variables["params"]``."""
        return cls(jnp.asarray(0, jnp.int32), variables, optimizer.init(variables["params"]), rng, extra)


def _gathered_nll(logits: jax.Array, ids: jax.Array, name: str, what: str) -> jax.Array:
    """−log softmax(logits)[..., id] per position. Ids outside [0, V) raise when concrete; traced, they give
    NaN (never a silently wrapped or zero-gradient loss), so a diverged-looking loss, not a plausible one,
    surfaces."""
    count = logits.shape[-1]
    checks.check_ids(name, ids, count, what=what)
    ids = ids.astype(jnp.int32)
    valid = (ids >= 0) & (ids < count)
    return jnp.where(valid, _losses.token_nll(logits, jnp.where(valid, ids, 0)), jnp.nan)


def example_losses(logits: jax.Array, batch: Batch) -> jax.Array:
    """Per-example weighted loss ℓᵢ = wᵢ·CE or wᵢ·KL(tᵢ ‖ softmax f(xᵢ)) (see the module docstring).

    Args:
        logits: f(x), ``[B, C]``.
        batch: a dict with integer labels ``"y"`` ``[B]`` or soft targets ``"target_probs"`` ``[B, C]``
            (which win when both are given), and optionally weights ``"weight"`` ``[B]``.

    Returns:
        ℓ, float32 ``[B]``.

    Raises:
        ValueError: neither ``"y"`` nor ``"target_probs"``, or (concrete) a label outside [0, C); a traced
            one gives NaN.

    Examples:
        >>> import jax.numpy as jnp
        >>> logits = jnp.log(jnp.array([[0.5, 0.5], [0.8, 0.2]]))
        >>> example_losses(logits, {"y": jnp.array([0, 1]), "weight": jnp.array([1.0, -1.0])})  # -ln p_y·w
        Array([ 0.6931...,  -1.6094...], dtype=float32)
        >>> example_losses(logits, {"target_probs": jnp.array([[0.5, 0.5], [0.8, 0.2]])})  # KL = 0
        Array([0., 0.], dtype=float32)
    """
    if "target_probs" in batch:
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        targets = batch["target_probs"].astype(jnp.float32)
        safe_log_targets = jnp.log(jnp.where(targets > 0, targets, 1.0))
        losses = jnp.sum(targets * (safe_log_targets - log_probs), axis=-1)
    else:
        if "y" not in batch:
            raise ValueError(
                f"example_losses needs batch['y'] (labels) or batch['target_probs'], got {sorted(batch)}"
            )
        losses = _gathered_nll(logits, batch["y"], "batch['y']", "class labels")
    if "weight" in batch:
        losses = losses * batch["weight"].astype(jnp.float32)
    return losses


def next_token_losses(logits: jax.Array, batch: Batch) -> jax.Array:
    """Per-sequence mean next-token cross-entropy of a language model, shape ``[B]``.

    With tokens x = ``batch["x"]`` ``[B, T]`` and an optional 0/1 ``batch["mask"]`` m ``[B, T]`` on target
    positions (default all ones):

        ℓ_b = Σ_{t≥1} m_{b,t} · (−log softmax(logits_{b,t−1})[x_{b,t}]) / max(1, Σ_{t≥1} m_{b,t})

    so a sequence without target tokens contributes 0.

    Args:
        logits: the LM's logits ``[B, T, V]``.
        batch: ``{"x": int tokens [B, T]}`` and optionally ``"mask"`` ``[B, T]``.

    Returns:
        ℓ, float32 ``[B]``.

    Raises:
        ValueError: (concrete) a token outside [0, V); a traced one gives NaN.

    Examples:
        >>> import jax.numpy as jnp
        >>> logits = jnp.zeros((1, 3, 4))  # uniform over 4 tokens: every target costs ln 4
        >>> next_token_losses(logits, {"x": jnp.array([[0, 1, 2]])})
        Array([1.3862...], dtype=float32)
    """
    token_nll = _gathered_nll(logits[:, :-1], batch["x"][:, 1:], "batch['x']", "token ids")
    mask = batch["mask"][:, 1:].astype(jnp.float32) if "mask" in batch else jnp.ones_like(token_nll)
    return jnp.sum(token_nll * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


@functools.lru_cache(maxsize=32)
def make_train_step(
    model: Model,
    optimizer: optax.GradientTransformation,
    *,
    loss: Callable[[jax.Array, Batch], jax.Array] = example_losses,
    microbatches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted ``step(state, batch) -> (state, {"loss": mean loss})`` for ``model`` and ``optimizer``.

    The model runs in train mode (BatchNorm batch statistics, dropout from ``fold_in(state.rng,
    state.step)``); updated batch
    statistics are carried in ``state.variables``. Optimizers that take extra arguments (optax's
    ``GradientTransformationExtraArgs``) receive the parameters as ``params``. Steps are cached per
    ``(model, optimizer, loss, microbatches)``, so training the same model twice with one optimizer
    compiles once. With a sparse optimizer (:mod:`unlearnx.sparse`) the step branches on whether it updates
    the masks before it starts (:func:`unlearnx.sparse.branch_on_mask_update`), so that its other steps cost
    what a static sparse step costs.

    ``microbatches = k > 1`` splits the batch into k equal parts and accumulates their gradients in a
    ``lax.scan`` before the one optimizer update: the mean of the k part means is the batch mean, so the
    update is the full batch's (to float rounding) while activations are held for B/k examples at a time.
    Each part draws its dropout from ``fold_in(rng, part)`` and sees the batch statistics the previous part
    left (BatchNorm then normalises per part).
    """
    microbatches = checks.static_int("microbatches", microbatches, low=1)

    def objective(params, variables, batch, rng):
        outputs, new_variables = model.apply({**variables, "params": params}, batch["x"], train=True, rng=rng)
        return jnp.mean(loss(outputs, batch)), new_variables

    def gradients(params, variables, batch, rng):
        if microbatches == 1:
            return jax.value_and_grad(objective, has_aux=True)(params, variables, batch, rng)

        def part(carry, inputs):
            variables, value, grads = carry
            chunk, index = inputs
            (v, variables), g = jax.value_and_grad(objective, has_aux=True)(
                params, variables, chunk, jax.random.fold_in(rng, index)
            )
            return (variables, value + v, jax.tree.map(jnp.add, grads, g)), None

        chunks = jax.tree.map(lambda leaf: _split(leaf, microbatches), batch)
        start = (variables, jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (variables, value, grads), _ = jax.lax.scan(part, start, (chunks, jnp.arange(microbatches)))
        return (value / microbatches, variables), jax.tree.map(lambda g: g / microbatches, grads)

    @jax.jit
    @sparse.branch_on_mask_update  # a sparse optimizer's mask updates: a branch taken before the forward pass
    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        params = state.variables["params"]
        (value, new_variables), grads = gradients(params, state.variables, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_variables = {**new_variables, "params": optax.apply_updates(params, updates)}
        return state._replace(step=state.step + 1, variables=new_variables, opt_state=opt_state), {
            "loss": value
        }

    return step


def _split(leaf: jax.Array, parts: int) -> jax.Array:
    """``[B, ...]`` → ``[parts, B / parts, ...]``; B must divide (shapes are static: raises at trace)."""
    if leaf.shape[0] % parts:
        raise ValueError(f"microbatches={parts} does not divide the batch of {leaf.shape[0]} examples")
    return leaf.reshape(parts, leaf.shape[0] // parts, *leaf.shape[1:])


def predict(model: Model, variables: PyTree, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Eval-mode outputs of ``model`` on ``x``, computed in batches.

    Each batch is padded to a power of two (at most ``batch_size``), so sets of any size reuse a few
    compiled shapes.

    Args:
        model: a :class:`unlearnx.models.Model`.
        variables: its variables.
        x: the inputs, ``[N, ...]``.
        batch_size: the most examples per call.

    Returns:
        ``model.apply(variables, x, train=False)`` as a host float32 array ``[N, ...]``.

    Raises:
        ValueError: ``x`` is empty.

    Examples:
        >>> import jax, numpy as np
        >>> from unlearnx import models
        >>> model = models.mlp((4,), 3, hidden=(8,))
        >>> variables, x = model.init(jax.random.key(0)), np.ones((5, 4), np.float32)
        >>> outputs = predict(model, variables, x, batch_size=2)  # batches of 2, 2 and 1 (padded to 1)
        >>> outputs.shape, bool(np.allclose(outputs, model.apply(variables, x, train=False), atol=1e-6))
        ((5, 3), True)
    """
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
