"""Diagonal importance estimators: the empirical Fisher and the batch-gradient accumulators of SSD/LFSSD.

With per-example losses ℓᵢ(θ) over N examples split into K batches bₖ:

* ``"empirical"``  I = (1/N) Σᵢ (∂ℓᵢ/∂θ)²                -- the empirical Fisher diagonal (exact per-example
  gradients with ``vmap``; independent of how the data are batched);
* ``"batch_sq"``   I = (1/K) Σₖ (∂ mean_{i∈bₖ} ℓᵢ / ∂θ)²  -- what the SSD reference computes; since
  E[ḡ²] = μ² + σ²/B it shrinks with the batch size B;
* ``"batch_abs"``  I = (1/K) Σₖ ``|∂ mean_{i∈bₖ} ℓᵢ / ∂θ|``   -- LFSSD's accumulator (with ℓᵢ = ‖f(xᵢ)‖²).

The two batch estimators agree with ``"empirical"`` (squared) at B = 1.

``"empirical"`` needs no per-example gradient of the layers that hold nearly all parameters: for a dense layer
y = xW applied once per example Σᵢ (∂ℓᵢ/∂W)² = (x ∘ x)ᵀ(δ ∘ δ) with δᵢ = ∂ℓᵢ/∂y; embeddings sum δ over each
example's positions per row before squaring; convolution kernels are formed per example one kernel offset at a
time. These structures are found by a jaxpr match (``unlearnx._fisher_structured``, whose docstring gives the
design); every other leaf keeps exact per-example gradients from ``vmap``. Both paths are exact, so the result
does not depend on which one a leaf takes (to float32 rounding), and the exact Fisher costs about as much as
``"batch_sq"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from unlearnx import _fisher_structured as _structured
from unlearnx import _validation as checks
from unlearnx import parallel
from unlearnx import tree as tree_lib
from unlearnx._fisher_losses import output_norm_loss, sampled_label_loss
from unlearnx._typing import PyTree

LossFn = Callable[[PyTree, PyTree], jax.Array]
Estimator = Literal["empirical", "batch_sq", "batch_abs"]
ESTIMATORS: tuple[str, ...] = ("empirical", "batch_sq", "batch_abs")

__all__ = ["ESTIMATORS", "diagonal", "output_norm_loss", "sampled_label_loss"]


def diagonal(
    loss_fn: LossFn,
    params: PyTree,
    batches: Iterable[PyTree],
    *,
    estimator: Estimator = "empirical",
    chunk_size: int | None = None,
    axis_name: str | None = None,
    structured: bool = True,
    mesh: Mesh | None = None,
) -> PyTree:
    """Diagonal importance of every parameter (see the module docstring for the three estimators).

    Args:
        loss_fn: ``loss_fn(params, batch) -> [B]`` per-example losses. Row i must depend on example i only
            (e.g. BatchNorm in eval mode): examples are differentiated one at a time for ``"empirical"`` and
            short batches are padded with zero-weight rows.
        params: the parameter tree (Linen dict, NNX ``State``, plain dict, ...). Leaves must be floating.
        batches: an iterable of batches, pytrees of one leading batch axis (the last batch may be smaller).
        estimator: ``"empirical"``, ``"batch_sq"`` or ``"batch_abs"``.
        chunk_size: for ``"empirical"``, the number of per-example gradients materialised at once (bounds
            memory at ``chunk_size × |θ|`` floats); ``None`` does a whole batch at once.
        axis_name: inside ``shard_map``/``pmap`` over a data axis, its name: sums and batch means are
            all-reduced, so every device returns the importance of the global data.
        structured: for ``"empirical"``, structured per-example squares where the loss's jaxpr shows them
            (module docstring); other leaves, or all when ``False``, take ``vmap`` per-example gradients. Both
            are exact; the structured path costs about one batch gradient.
        mesh: data parallelism without ``shard_map``: each host batch (this process's share) is padded with
            zero-weight rows to a multiple of the devices and split over them; the same importance.

    Returns:
        A float32 tree with ``params``' exact structure.

    Raises:
        ValueError: unknown estimator, bad ``chunk_size``, no batches, empty or ragged batches, a loss that is
            not per-example; and, when concrete: NaN/inf parameters, a non-finite loss of a real example (e.g.
            a label outside [0, C): NaN with a zero gradient), or a float32 overflow (naming batch or path).
        TypeError: a non-floating parameter leaf, or a ``structured`` that is not a bool.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import fisher
        >>> loss = lambda p, batch: jnp.sum(batch["x"] @ p["w"], axis=1)  # ∂ℓᵢ/∂w = xᵢ
        >>> batch = {"x": jnp.asarray([[1.0, 2.0], [3.0, 0.0]])}
        >>> fisher.diagonal(loss, {"w": jnp.ones((2, 1))}, [batch])["w"][:, 0].tolist()  # mean of xᵢ²
        [5.0, 2.0]

    References:
        Foster, Schoepf and Brintrup, *Fast Machine Unlearning Without Retraining Through Selective Synaptic
        Dampening*, AAAI 2024 (``batch_sq``); Dangel, Kunstner and Hennig, *BackPACK: Packing more into
        backprop*, ICLR 2020 (per-example squared gradients from layer inputs and output gradients).
    """
    _check_arguments(params, estimator, chunk_size, structured)
    structured = structured and estimator == "empirical"
    contribution = _cached(_contribution_fn, loss_fn, estimator, chunk_size, axis_name, structured)
    total, flags = _start(params)  # one dispatch: the zero sums and the params' NaN/inf flags
    checks.check_tree("params", params, flags=flags)
    count, padded_size, bad_losses = 0, None, []
    devices = 1 if mesh is None else mesh.devices.size
    for index, batch in enumerate(batches):
        size = _batch_size(batch, index)
        padded_size = size if padded_size is None else max(padded_size, size)
        padded_size = -(-padded_size // devices) * devices
        batch, weights = _padded(batch, size, padded_size, mesh)
        _check_loss_shape(loss_fn, params, batch, index)
        total, n, bad = parallel.throttle(contribution(total, params, batch, weights), index + 1)
        count = count + n
        bad_losses.append(bad)
    if padded_size is None:
        raise ValueError("batches is empty: importance needs at least one batch")
    _check_losses(bad_losses)
    importance, flags = _finish(total, count)
    reduce = "absolute" if estimator == "batch_abs" else "squared"
    checks.check_output(
        "fisher.diagonal: the importance",
        importance,
        f"the {reduce} gradients overflowed float32 (|∂ℓ/∂θ| beyond ≈1.8e19 when squared); rescale the loss",
        flags=flags,
    )
    return importance


@jax.jit
def _start(params: PyTree) -> tuple[PyTree, jax.Array]:
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    return zeros, checks.nonfinite_flags(params)


@jax.jit
def _finish(total: PyTree, count: Any) -> tuple[PyTree, jax.Array]:
    # t · (1/count): XLA rewrites a division by a broadcast scalar into this in most programs, but not in
    # every one; written out, the importances do not depend on the program around them (±1 ulp otherwise).
    scale = 1.0 / jnp.asarray(count, jnp.float32)
    importance = jax.tree.map(lambda t: t * scale, total)
    return importance, checks.nonfinite_flags(importance)


def _check_arguments(params: PyTree, estimator: str, chunk_size: int | None, structured: bool) -> None:
    checks.choice("estimator", estimator, ESTIMATORS)
    if chunk_size is not None:
        checks.static_int("chunk_size", chunk_size, low=1)
    if not isinstance(structured, bool):
        raise TypeError(f"structured must be a Python bool, got {structured!r}")
    for path, leaf in tree_lib.leaves_with_paths(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"params: leaf {path!r} has non-floating dtype {jnp.result_type(leaf)}")


def _padded(batch: PyTree, size: int, padded_size: int, mesh: Mesh | None) -> tuple[PyTree, Any]:
    """``batch`` padded to ``padded_size`` rows with zero-weight copies of its first example (so one compiled
    update and one loss-shape check serve a short last batch too), and its weights; split over ``mesh``."""
    pad = padded_size - size
    weights = np.concatenate([np.ones(size, np.float32), np.zeros(pad, np.float32)])
    if pad:
        batch = jax.tree.map(lambda a: _pad_rows(a, pad), batch)
    if mesh is not None:
        batch, weights = parallel.shard_batch(parallel.process_share((batch, weights)), mesh)
    return batch, weights


def _check_losses(bad_losses: list) -> None:
    """Raises naming the first batch with a non-finite per-example loss (skipped when traced)."""
    if checks.is_traced(bad_losses):
        return
    for index, bad in enumerate(np.asarray(jnp.stack(bad_losses)).tolist()):
        if bad:
            raise ValueError(
                f"loss_fn returned {bad} non-finite per-example losses in batch {index}: a label outside "
                "[0, C) (take_along_axis fills NaN, with a zero gradient), non-finite inputs or an overflow"
            )


def _cached(builder: Callable, loss_fn: LossFn, *args: Any) -> Any:
    """``builder(loss_fn, *args)`` through its cache, or uncached when ``loss_fn`` is not hashable."""
    try:
        return builder(loss_fn, *args)
    except TypeError:  # an unhashable callable (e.g. a module holding arrays)
        return builder.__wrapped__(loss_fn, *args)


def _pad_rows(leaf: Any, pad: int) -> Any:
    """Appends ``pad`` copies of the first row: on the host for NumPy data, on device otherwise."""
    if isinstance(leaf, np.ndarray):
        return np.concatenate([leaf, np.repeat(leaf[:1], pad, axis=0)])
    return _pad_on_device(leaf, pad)


@functools.partial(jax.jit, static_argnums=1)
def _pad_on_device(leaf: jax.Array, pad: int) -> jax.Array:
    return jnp.concatenate([leaf, jnp.repeat(leaf[:1], pad, axis=0)])


def _spec(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(np.shape(leaf)), jnp.result_type(leaf)) for leaf in leaves)


@functools.lru_cache(maxsize=256)
def _loss_shape(loss_fn: LossFn, params_spec: tuple, batch_spec: tuple) -> tuple:
    """The loss's output shape for abstract params and batch (traced once per signature)."""
    abstract = [
        jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaves])
        for treedef, leaves in (params_spec, batch_spec)
    ]
    return getattr(jax.eval_shape(loss_fn, *abstract), "shape", None)


def _batch_size(batch: PyTree, index: int) -> int:
    """Validates one batch's leading axis and returns the batch size."""
    leaves = tree_lib.leaves_with_paths(batch)
    if not leaves:
        raise ValueError(f"batch {index} has no arrays")
    sizes = {path: (np.shape(leaf)[0] if np.ndim(leaf) else None) for path, leaf in leaves}
    if None in sizes.values():
        path = next(p for p, s in sizes.items() if s is None)
        raise ValueError(f"batch {index}: leaf {path!r} is a scalar; batches need a leading batch axis")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch {index}: leaves disagree on the batch size: {sizes}")
    size = next(iter(sizes.values()))
    if size == 0:
        raise ValueError(f"batch {index} is empty (batch size 0)")
    return size


def _check_loss_shape(loss_fn: LossFn, params: PyTree, batch: PyTree, index: int) -> None:
    """Raises unless ``loss_fn`` returns one loss per example (traced once per input signature)."""
    size = np.shape(jax.tree.leaves(batch)[0])[0]
    try:
        shape = _cached(_loss_shape, loss_fn, _spec(params), _spec(batch))
    except (TypeError, ValueError) as error:  # the user's loss does not accept these shapes or dtypes
        raise ValueError(
            f"loss_fn(params, batch {index}) fails on these shapes and dtypes: {error}"
        ) from error
    if shape != (size,):
        raise ValueError(
            f"loss_fn must return per-example losses of shape (B,) = ({size},) for batch {index}, got {shape}"
        )


@functools.lru_cache(maxsize=64)
def _contribution_fn(
    loss_fn: LossFn, estimator: str, chunk_size: int | None, axis_name: str | None, structured: bool
) -> Callable:
    """Builds the jitted ``(total, params, batch, weights) -> (total + contribution, count, bad)`` update,
    ``bad`` counting the real examples whose loss is not finite.

    ``weights`` is 1 for real examples and 0 for padding.
    """
    if estimator == "empirical":
        return jax.jit(functools.partial(_empirical, loss_fn, chunk_size, axis_name, structured))
    return jax.jit(functools.partial(_batch_accumulate, loss_fn, estimator, axis_name))


def _local(params: PyTree, axis_name: str | None) -> PyTree:
    """Inside shard_map, differentiating replicated (device-invariant) params already all-reduces the
    gradient; casting them to device-varying keeps each gradient local so that the explicit psum is the
    only reduction and per-example gradients stay per example."""
    return params if axis_name is None else jax.tree.map(lambda p: _varying(p, axis_name), params)


def _nonfinite(losses: jax.Array, weights: jax.Array) -> jax.Array:
    """The number of real examples (weight > 0) whose loss is NaN/inf."""
    return jnp.sum((weights > 0) & ~jnp.isfinite(losses), dtype=jnp.int32)


def _batch_accumulate(loss_fn, estimator, axis_name, total, params, batch, weights):
    """Adds the squared (``batch_sq``) or absolute (``batch_abs``) batch-mean gradient to ``total``."""

    def weighted_total(p):
        losses = loss_fn(p, batch)
        return jnp.sum(weights * losses), losses

    grads, losses = jax.grad(weighted_total, has_aux=True)(_local(params, axis_name))
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    size = jnp.sum(weights)
    if axis_name is not None:
        grads, size = jax.lax.psum((grads, size), axis_name)
    reduce = jnp.square if estimator == "batch_sq" else jnp.abs
    total = jax.tree.map(lambda t, g: t + reduce(g / size), total, grads)
    return total, jnp.asarray(1.0, jnp.float32), _nonfinite(losses, weights)


def _vmap_squares(loss_fn, params, batch, weights):
    """Σᵢ wᵢ (∂ℓᵢ/∂θ)² from per-example gradients of the whole tree (``vmap``), and the losses."""

    def example_loss(p, example):
        loss = loss_fn(p, jax.tree.map(lambda a: a[None], example))[0]
        return loss, loss

    grads, losses = jax.vmap(jax.grad(example_loss, has_aux=True), in_axes=(None, 0))(params, batch)
    squares = jax.tree.map(lambda g: jnp.tensordot(weights, jnp.square(g.astype(jnp.float32)), axes=1), grads)
    return squares, losses


def _empirical(loss_fn, chunk_size, axis_name, structured, total, params, batch, weights):
    """Adds Σᵢ wᵢ (∂ℓᵢ/∂θ)² to ``total``, ``chunk_size`` examples at a time (a ``scan`` over chunks)."""
    size = weights.shape[0]
    chunk = size if chunk_size is None else min(chunk_size, size)
    num_chunks = -(-size // chunk)
    pad = num_chunks * chunk - size
    # Pad with copies of the first example (valid inputs, so no inf/NaN) carrying weight 0.
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]), batch)
    weights = jnp.concatenate([weights, jnp.zeros(pad, jnp.float32)])
    chunks = jax.tree.map(lambda a: a.reshape((num_chunks, chunk) + a.shape[1:]), padded)
    chunk_weights = weights.reshape(num_chunks, chunk)
    params = _local(params, axis_name)
    plan = _structured.analyse(loss_fn, params, jax.tree.map(lambda a: a[0], batch)) if structured else None

    def body(acc, xs):
        chunk_batch, w = xs
        squares = None
        if plan is not None:
            cast = functools.partial(_local, axis_name=axis_name)
            try:
                squares, losses = _structured.squares(plan, params, chunk_batch, w, cast)
            except Exception:  # noqa: BLE001 -- a jaxpr the interpreter cannot replay: the exact vmap path
                squares = None
        if squares is None:
            squares, losses = _vmap_squares(loss_fn, params, chunk_batch, w)
        return jax.tree.map(jnp.add, acc, squares), _nonfinite(losses, w)

    initial = _local(jax.tree.map(jnp.zeros_like, total), axis_name)
    summed, bad = jax.lax.scan(body, initial, (chunks, chunk_weights))
    count = jnp.sum(weights)
    if axis_name is not None:
        summed, count = jax.lax.psum((summed, count), axis_name)
    return jax.tree.map(jnp.add, total, summed), count, jnp.sum(bad)


def _varying(leaf: jax.Array, axis_name: str) -> jax.Array:
    """Casts a device-invariant value to device-varying over ``axis_name`` (no-op if already varying)."""
    try:
        return jax.lax.pcast(leaf, axis_name, to="varying")
    except ValueError:  # already varying along the axis
        return leaf
