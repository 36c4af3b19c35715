"""RECE (Gong et al., ECCV 2024): UCE, then rounds of "derive the embedding that still evokes the concept,
erase it too", over every selected kernel of a parameter tree.

Every selected kernel K_l (Flax layout ``(d_in, d_out_l)``, shared d_in) sees the same keys, so

1. UCE erase: K_l ← K_l + G₀⁻¹ α C_Eᵀ (C_G K_l − C_E K_l) = (I + D₀) K_l with the targets V* = C_G K_l
   (``guide_keys @ K``) and G₀ = λ I + α C_Eᵀ C_E + β C_Pᵀ C_P;
2. each of ``epochs`` rounds r: c′ = (λ_reg I + Σ_l K′_l K′_lᵀ)⁻¹ (Σ_l K′_l K_lᵀ) c for every concept row c
   (K′ the current, K the original kernels), then UCE on the current kernels with erase keys C′, targets
   C_G K′_l and the round's (α_r, β_r, λ_r): K′_l ← (I + D_r) K′_l.

Each step multiplies every kernel on the left by one d_in × d_in matrix, D = α G⁻¹ Cᵀ (C_G − C), and with
M = I + D_total and S = Σ_l K_l K_lᵀ (computed once) the sums of step (a) are Σ K′K′ᵀ = M S Mᵀ and
Σ K′Kᵀ = M S. The whole edit is therefore a chain of d_in × d_in solves (768 for SD v1.x) followed by one
product K_l + D_total K_l per kernel, all in float32 at ``Precision.HIGHEST``. This equals the naive
composition of :func:`unlearnx.erase.uce` and :func:`unlearnx.erase.derive_embedding` per kernel.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx.erase._checks import as_kernel, as_rows, check_scale, flat32, host64, overflow_cause
from unlearnx.erase._linalg import hi_matmul
from unlearnx.erase.embedding import mapped_embedding
from unlearnx.erase.selectors import cross_attention_kv
from unlearnx.erase.uce import uce_change

PyTree = Any

__all__ = ["rece"]


def _selected_kernels(params: PyTree, where: tree_lib.Where) -> tuple[list, Any, list[int], int]:
    """Flattens ``params``; returns (leaves, treedef, indices of selected kernels, d_in), validating them."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = jax.tree.leaves(tree_lib.select(params, where))
    if len(flags) != len(flat):  # pragma: no cover - select keeps the structure
        raise ValueError("where did not produce one flag per leaf")
    paths = [tree_lib.key_path_str(path) for path, _ in flat]
    chosen = [i for i, flag in enumerate(flags) if flag]
    if not chosen:
        raise ValueError(
            f"rece: where={where!r} selects no kernel in params (its paths include {paths[:4]}); pass a "
            "selector matching the cross-attention key/value kernels"
        )
    d_in = None
    for i in chosen:
        kernel = as_kernel(f"params[{paths[i]!r}]", flat[i][1])
        if d_in is None:
            d_in, first = kernel.shape[0], paths[i]
        elif kernel.shape[0] != d_in:
            raise ValueError(
                f"rece: selected kernels must share d_in: {paths[i]!r} has shape {jnp.shape(flat[i][1])}, "
                f"{first!r} has d_in {d_in}"
            )
    return [leaf for _, leaf in flat], treedef, chosen, d_in


def _step(keys, guide, preserve, erase_scale, preserve_scale, lamb):
    """Factors (P, Q) of D = P Q with UCE(K, keys, guide @ K, ·) = (I + D) K for every K:
    D = α G⁻¹ keysᵀ (guide − keys)."""
    return uce_change(
        keys, preserve, guide - keys, erase_scale=erase_scale, preserve_scale=preserve_scale, lamb=lamb
    )


def _check_epochs(epochs) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        try:
            epochs = operator.index(epochs)
        except TypeError:
            raise TypeError(f"epochs must be a Python int (it is static), got {epochs!r}") from None
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    return checks.static_int("epochs", epochs, high=checks.INT32_MAX)


def _hyper(**hyper) -> dict:
    """The static scales, validated: α, β ≥ 0 and λ, λ_reg > 0."""
    for name, value in hyper.items():
        check_scale(name, value, positive=name in ("lamb", "round_lamb", "reg"))
    return hyper


def rece(
    params: PyTree,
    concept_keys: Any,
    guide_keys: Any,
    preserve_keys: Any,
    *,
    where: tree_lib.Where = cross_attention_kv,
    epochs: int = 1,
    reg: float = 0.1,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
    round_erase_scale: float = 1.0,
    round_preserve_scale: float = 0.1,
    round_lamb: float = 0.1,
) -> tuple[PyTree, dict[str, jax.Array]]:
    """UCE, then ``epochs`` RECE rounds, on every kernel ``where`` selects (math: the module docstring).

    Args:
      params: parameter tree (Linen dict, NNX ``State``, plain dict, ...).
      concept_keys: C_E, ``[n, d_in]`` token rows of the concept prompt (e.g. ``[77, 768]`` CLIP states).
      guide_keys: C_G, ``[n, d_in]`` token rows aligned with ``concept_keys`` (e.g. the prompt " "); the
        targets of every erase step are ``guide_keys @ K`` with K the kernel being edited.
      preserve_keys: C_P, ``[m, d_in]`` rows to preserve (m may be 0, or ``None``).
      where: selector of the kernels to edit (``unlearnx.tree`` syntax); default: cross-attention keys and
        values. Kernels are ``(d_in, *out)`` with a shared d_in; 3-D kernels are flattened over outputs.
      epochs: number of RECE rounds (≥ 0; 0 is plain UCE).
      reg: λ_reg > 0 of the embedding derivation.
      erase_scale, preserve_scale, lamb: α ≥ 0, β ≥ 0, λ > 0 of the initial UCE erase.
      round_erase_scale, round_preserve_scale, round_lamb: α, β, λ of each round's erase.

    Returns:
      ``(new_params, history)``: ``new_params`` has ``params``' exact structure and dtypes, unselected
      leaves returned as they are (the same objects); ``history`` holds float32 arrays
      ``embeddings`` ``[epochs, n, d_in]`` (c′ of each round), ``change`` ``[epochs + 1]`` (relative
      Frobenius change ‖K_after − K_before‖ / ‖K_before‖ over all selected kernels: the UCE step, then each
      round) and ``distance`` ``[epochs + 1]`` (‖K_after − K_original‖ / ‖K_original‖ after each step).

    Raises:
      ValueError: ``where`` selecting nothing, kernels of different d_in or fewer than 2 dimensions, key
        shapes not ``[rows, d_in]`` or differing between concept and guide, empty concept keys, negative
        or non-finite scales, λ, λ_reg ≤ 0, negative ``epochs``, non-finite values (when not traced), or
        non-finite edited kernels or history from finite inputs (float32 overflow, checked when not traced;
        the message names the quantity that overflowed).
      TypeError: non-integer ``epochs``, non-floating kernels, traced scales (hyper-parameters are static).
    """
    epochs = _check_epochs(epochs)
    leaves, treedef, chosen, d_in = _selected_kernels(params, where)
    concept = as_rows("concept_keys", concept_keys, d_in, allow_empty=False)
    guide = as_rows("guide_keys", guide_keys, d_in, allow_empty=False)
    if guide.shape != concept.shape:
        raise ValueError(
            f"guide_keys must be aligned with concept_keys (one guide row per concept row): shapes "
            f"{guide.shape} vs {concept.shape}"
        )
    preserve = as_rows("preserve_keys", preserve_keys, d_in, allow_empty=True)

    hyper = _hyper(
        erase_scale=erase_scale,
        preserve_scale=preserve_scale,
        lamb=lamb,
        reg=reg,
        round_erase_scale=round_erase_scale,
        round_preserve_scale=round_preserve_scale,
        round_lamb=round_lamb,
    )
    edited, history = _rece(
        [jnp.asarray(leaves[i]) for i in chosen], concept, guide, preserve, hyper, epochs=epochs
    )
    if not checks.is_traced((edited, history)):
        cause = _RecePeaks([leaves[i] for i in chosen], concept, guide, preserve, hyper)
        paths = [checks.path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        kernels = {paths[i]: kernel for i, kernel in zip(chosen, edited, strict=True)}
        checks.check_output("rece: the edited kernels", kernels, cause)
        checks.check_output("rece: the history", history, cause)
    new_leaves = list(leaves)
    for i, kernel in zip(chosen, edited, strict=True):
        new_leaves[i] = kernel
    return jax.tree_util.tree_unflatten(treedef, new_leaves), history


class _RecePeaks:
    """The overflow diagnosis of :func:`rece`, computed on the host only when its message is formatted."""

    def __init__(self, kernels, concept, guide, preserve, hyper):
        self.args = (kernels, concept, guide, preserve, hyper)

    def __str__(self) -> str:
        kernels, concept, guide, preserve, hyper = self.args
        flat = [host64(k) for k in kernels]
        c, g = host64(concept), host64(guide)
        p = host64(preserve) if preserve.shape[0] else np.zeros((0, c.shape[1]))
        alpha = max(float(hyper["erase_scale"]), float(hyper["round_erase_scale"]))
        beta = max(float(hyper["preserve_scale"]), float(hyper["round_preserve_scale"]))
        return overflow_cause(
            {
                "the kernels' Gram matrix Σ K Kᵀ": lambda: sum(k @ k.T for k in flat),
                "the Gram matrix α C_E C_Eᵀ": lambda: alpha * (c @ c.T),
                "the Gram matrix α C_G C_Eᵀ": lambda: alpha * (g @ c.T),
                "the Gram matrix β C_P C_Pᵀ": lambda: beta * (p @ p.T),
            }
        )


@functools.partial(jax.jit, static_argnames="epochs")
def _rece(originals, concept, guide, preserve, hyper, *, epochs):
    """The shared-structure computation: a chain of d_in × d_in steps, then one product per kernel."""
    kernels = [flat32(k) for k in originals]
    concept, guide, preserve = (a.astype(jnp.float32) for a in (concept, guide, preserve))
    left, right = _step(
        concept, guide, preserve, hyper["erase_scale"], hyper["preserve_scale"], hyper["lamb"]
    )
    total = hi_matmul(left, right)  # D_total = M − I
    embeddings, changes, distances = [], [], []
    if epochs:
        gram = sum(hi_matmul(k, k.T) for k in kernels)
        gram = 0.5 * (gram + gram.T)  # S = Σ K Kᵀ
        gram_trace = jnp.trace(gram)
        identity = jnp.eye(total.shape[0], dtype=jnp.float32)

        def grams():  # M S = Σ K′Kᵀ and M S Mᵀ = Σ K′K′ᵀ, formed from M: M is near-singular after a few
            mapped = hi_matmul(identity + total, gram)  # rounds, so low-rank updates would cancel badly
            return mapped, hi_matmul(mapped, identity + total.T)

        def distance(mapped):  # ‖(M − I) K‖ / ‖K‖ over all kernels: tr((M S − S) (M − I)ᵀ) / tr(S)
            return jnp.sqrt(jnp.sum((mapped - gram) * total) / gram_trace)

        mapped, current = grams()
        changes.append(distance(mapped))
        distances.append(changes[0])
        for r in range(epochs):
            if r:
                mapped, current = grams()
                distances.append(distance(mapped))
            embedding = mapped_embedding(identity + total, mapped, current, concept, hyper["reg"])
            left, right = _step(
                embedding,
                guide,
                preserve,
                hyper["round_erase_scale"],
                hyper["round_preserve_scale"],
                hyper["round_lamb"],
            )
            embeddings.append(embedding)
            step = hi_matmul(left, right)  # formed first: its thin factors cancel heavily
            changes.append(jnp.sqrt(jnp.sum(hi_matmul(step, current) * step) / jnp.trace(current)))
            total = total + step + hi_matmul(step, total)
        edited = [k + hi_matmul(total, k) for k in kernels]
        distances.append(
            jnp.sqrt(
                sum(jnp.sum(jnp.square(e - k)) for e, k in zip(edited, kernels, strict=True)) / gram_trace
            )
        )
    else:
        edited = [k + hi_matmul(total, k) for k in kernels]
        change = jnp.sqrt(sum(jnp.sum(jnp.square(e - k)) for e, k in zip(edited, kernels, strict=True)))
        change = change / jnp.sqrt(sum(jnp.sum(jnp.square(k)) for k in kernels))
        changes, distances = [change], [change]
    history = {
        "embeddings": jnp.stack(embeddings) if embeddings else jnp.zeros((0, *concept.shape), jnp.float32),
        "change": jnp.stack(changes),
        "distance": jnp.stack(distances),
    }
    edited = [e.reshape(k.shape).astype(k.dtype) for e, k in zip(edited, originals, strict=True)]
    return edited, history
