"""SSD's importances and dampening for the ``ssd_forget`` experiment: the data D for I_D in the reference's
order, the per-example losses (cross-entropy, or LFSSD's label-free output norm), data-parallel importance
passes, and the dampening itself, each timed."""

from __future__ import annotations

import functools

import jax
import numpy as np

from experiments.runner import timed
from unlearnx import data, fisher, models, parallel, train, unlearn
from unlearnx import tree as tree_lib
from unlearnx.unlearn import localize

__all__ = ["dampen", "importance_data", "importances", "max_ratio", "selected_fraction"]


def importance_data(train_set, retain, forget, order: str) -> dict[str, np.ndarray]:
    """D for I_D. ``"reference"``: the SSD reference's unshuffled ConcatDataset(retain, forget), with the
    retain set grouped class by class, so batches are nearly single-class; ``"dataset"``: the data set's
    own order. The order matters for ``batch_sq``/``batch_abs``: mixed-class batch gradients cancel,
    which shrinks I_D and makes more parameters pass the α test."""
    if order == "dataset":
        return train_set
    if order != "reference":
        raise ValueError(f"importance_order must be 'reference' or 'dataset', got {order!r}")
    by_class = np.argsort(retain["y"], kind="stable")
    return {key: np.concatenate([retain[key][by_class], forget[key]]) for key in ("x", "y")}


def importances(
    model: models.Model,
    variables,
    forget: dict,
    full_data: dict,
    estimator: str,
    *,
    batch_size: int,
    chunk_size: int | None,
    full: tuple | None = None,
):
    """(I_f, I_D, seconds for I_f, seconds for I_D) over all ``variables``: eval mode, unshuffled,
    data-parallel over all devices; ``batch_abs`` is LFSSD's label-free estimator. ``full``: an already
    computed ``(I_D, seconds)`` of the same model and estimator, returned instead of a pass over D.

    Importances cover the batch statistics too (SSD's default selector never touches them), so the
    loss depends on the model alone and compiles once per model and estimator, not once per seed.
    A warm-up pass over D_f (untimed) compiles before the timed passes.
    """
    loss_fn = _importance_loss(model, label_free=estimator == "batch_abs")
    chunk = chunk_size if estimator == "empirical" else None
    mesh = parallel.data_mesh()

    def importance(arrays):  # fisher pads every batch to a multiple of the devices and splits it over them
        batches = data.batches(arrays, batch_size)
        options = {"estimator": estimator, "chunk_size": chunk, "mesh": mesh}
        return timed(fisher.diagonal, loss_fn, variables, batches, **options)

    importance(forget)
    forget_importance, forget_seconds = importance(forget)
    full_importance, full_seconds = importance(full_data) if full is None else full
    return forget_importance, full_importance, forget_seconds, full_seconds


@functools.cache
def _importance_loss(model: models.Model, label_free: bool):
    """Per-example loss over full variables: cross-entropy, or LFSSD's ‖f(x)‖² when ``label_free``."""

    def logits_fn(variables, batch):
        return model.apply(variables, batch["x"])

    if label_free:
        return fisher.output_norm_loss(logits_fn)
    return lambda variables, batch: train.example_losses(logits_fn(variables, batch), batch)


@functools.partial(jax.jit, static_argnames=("alpha", "lam"))
def dampen(variables, forget_importance, full_importance, *, alpha: float, lam: float):
    """SSD on model variables (batch statistics untouched). α and λ are static (the library validates them
    at call time), so each distinct (α, λ) compiles once and is reused across methods, classes and seeds."""
    return unlearn.ssd(variables, forget_importance, full_importance, alpha=alpha, lam=lam)


def max_ratio(forget_importance, full_importance) -> float:
    """The largest I_f / I_D over the trainable parameters with I_D > 0 (batch statistics excluded). D ⊇ D_f
    bounds it for the exact empirical Fisher: I_D ≥ (|D_f|/|D|)·I_f, so it is at most |D|/|D_f|, and a fixed
    α at or above that bound selects nothing with λ = 1."""
    allowed = jax.tree.leaves(tree_lib.trainable(forget_importance))
    best = 0.0
    pairs = zip(jax.tree.leaves(forget_importance), jax.tree.leaves(full_importance), allowed, strict=True)
    for forget, full, keep in pairs:
        forget, full = np.asarray(forget, np.float64), np.asarray(full, np.float64)
        if keep and np.any(full > 0):
            best = max(best, float(np.max(forget[full > 0] / full[full > 0])))
    return best


def selected_fraction(forget_importance, full_importance, alpha: float) -> float:
    """The fraction of the trainable scalars (batch statistics excluded) SSD selects at ``alpha``:
    I_f > α·I_D."""
    chosen = localize.selection(forget_importance, full_importance, alpha=alpha)
    pairs = zip(jax.tree.leaves(chosen), jax.tree.leaves(tree_lib.trainable(chosen)), strict=True)
    kept, total = 0, 0
    for leaf, keep in pairs:
        if keep:
            kept, total = kept + int(np.sum(leaf)), total + int(np.size(leaf))
    return kept / max(total, 1)
