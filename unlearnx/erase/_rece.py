"""RECE (Gong et al., ECCV 2024): UCE, then rounds of "derive the embedding that still evokes the concept,
erase it too", over every selected kernel of a parameter tree.

Every selected kernel K_l (Flax layout ``(d_in, d_out_l)``, shared d_in) sees the same keys. With the initial
edit's rows C₀ (erase), C_G₀ (guide), C_P₀ (preserve) and the rounds' rows C, C_G, C_P:

1. UCE erase: K_l ← K_l + G₀⁻¹ α C₀ᵀ (C_G₀ K_l − C₀ K_l) = (I + D₀) K_l with the targets V* = C_G₀ K_l and
   G₀ = λ I + α C₀ᵀ C₀ + β C_P₀ᵀ C_P₀;
2. each of ``epochs`` rounds r: c′ = (λ_reg I + Σ_l K′_l K′_lᵀ)⁻¹ (Σ_l K′_l K_lᵀ) c for every row c of C
   (K′ the current, K the original kernels), then UCE on the current kernels with erase keys C′, targets
   C_G K′_l, preserve rows C_P and the round's (α_r, β_r, λ_r): K′_l ← (I + D_r) K′_l.

**Which rows each step uses.** The official pipeline (``CharlesGong12/RECE``: ``train.py`` on a checkpoint
of ``erase_methods/train_uce.py``) keys step 1 on the concept's rows *from its last word token to the end
of the prompt*, with the guide trimmed to the same number of rows (:func:`unlearnx.erase.last_word_rows`)
and the preserve prompts ('' for nudity) on all 77 rows; step 2 derives c′ from *all 77 rows* of the bare
concept prompt (BOS, EOS and padding included) and erases them towards all 77 rows of the guide (" "),
preserving all rows of its retain prompts (" "). Pass step 1's rows as ``initial_concept_keys``,
``initial_guide_keys`` and ``initial_preserve_keys``; without them step 1 uses the rounds' rows.

**β counts each preserve row once.** The official round repeats its retain prompts once per erased concept
(``retain_texts = [' ' for _ in old_texts]``), so with k concepts its effective round β is k·β; pass
``round_preserve_scale=k * β`` (or the preserve rows k times) to reproduce it. Several concepts are erased
together by stacking their rows (and their guides' rows) in ``concept_keys``/``guide_keys``.

Each step multiplies every kernel on the left by one d_in × d_in matrix, so the whole edit is a chain of
d_in × d_in solves (768 for SD v1.x) followed by one product K_l + D_total K_l per kernel, all in float32 at
``Precision.HIGHEST`` (:mod:`unlearnx.erase._chain`). This equals the naive composition of
:func:`unlearnx.erase.uce` and :func:`unlearnx.erase.derive_embedding` per kernel.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree
from unlearnx.erase._chain import rece_chain
from unlearnx.erase._checks import as_kernel, as_rows, check_scale, host64, overflow_cause
from unlearnx.erase._linalg import serially
from unlearnx.erase._selectors import cross_attention_kv

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
    d_in, kernels = None, {}
    for i in chosen:
        kernel = kernels[paths[i]] = as_kernel(f"params[{paths[i]!r}]", flat[i][1], check_values=False)
        if d_in is None:
            d_in, first = kernel.shape[0], paths[i]
        elif kernel.shape[0] != d_in:
            raise ValueError(
                f"rece: selected kernels must share d_in: {paths[i]!r} has shape {jnp.shape(flat[i][1])}, "
                f"{first!r} has d_in {d_in}"
            )
    checks.check_tree("params", kernels)  # the values: one pass over every kernel
    return [leaf for _, leaf in flat], treedef, chosen, d_in


def _hyper(**hyper) -> dict:
    """The static scales, validated: α, β ≥ 0 and λ, λ_reg > 0."""
    for name, value in hyper.items():
        check_scale(name, value, positive=name in ("lamb", "round_lamb", "reg"))
    return hyper


def _aligned(concept_name: str, guide_name: str, concept: Any, guide: Any, d_in: int) -> tuple:
    concept = as_rows(concept_name, concept, d_in, allow_empty=False)
    guide = as_rows(guide_name, guide, d_in, allow_empty=False)
    if guide.shape != concept.shape:
        raise ValueError(
            f"{guide_name} must be aligned with {concept_name} (one guide row per concept row): shapes "
            f"{guide.shape} vs {concept.shape}"
        )
    return concept, guide


def _keys(d_in: int, concept, guide, preserve, initial_concept, initial_guide, initial_preserve) -> tuple:
    """Validated ``(initial, rounds)`` row triples (erase, guide, preserve); the initial ones default to
    the rounds' rows."""
    rounds = (*_aligned("concept_keys", "guide_keys", concept, guide, d_in),)
    rounds += (as_rows("preserve_keys", preserve, d_in, allow_empty=True),)
    if (initial_concept is None) != (initial_guide is None):
        given, missing = (
            ("initial_concept_keys", "initial_guide_keys")
            if initial_guide is None
            else ("initial_guide_keys", "initial_concept_keys")
        )
        raise ValueError(
            f"{given} was given without {missing}: the initial edit's erase and guide rows must be passed "
            "together, aligned row by row (see erase.last_word_rows)"
        )
    if initial_concept is None:
        initial = rounds[:2]
    else:
        initial = _aligned("initial_concept_keys", "initial_guide_keys", initial_concept, initial_guide, d_in)
    if initial_preserve is None:
        initial += (rounds[2],)
    else:
        initial += (as_rows("initial_preserve_keys", initial_preserve, d_in, allow_empty=True),)
    return initial, rounds


def rece(
    params: PyTree,
    concept_keys: Any,
    guide_keys: Any,
    preserve_keys: Any,
    *,
    initial_concept_keys: Any = None,
    initial_guide_keys: Any = None,
    initial_preserve_keys: Any = None,
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
    """UCE, then ``epochs`` RECE rounds, on every kernel ``where`` selects (math, rows: module docstring).

    Args:
        params: parameter tree (Linen dict, NNX ``State``, plain dict, ...).
        concept_keys: C, ``[n, d_in]`` token rows of the concept prompt (e.g. all ``[77, 768]`` CLIP states
            of "nudity", or several concepts' stacked); every round derives c′ from each row.
        guide_keys: C_G, ``[n, d_in]`` token rows aligned with ``concept_keys`` (e.g. the prompt " "); each
            round's targets are ``guide_keys @ K′`` with K′ the kernel being edited.
        preserve_keys: C_P, ``[m, d_in]`` rows each round preserves (m may be 0, or ``None``); each row is
            counted once (see the module docstring for the official code's repetition).
        initial_concept_keys: C₀, ``[n₀, d_in]`` erase rows of the initial UCE edit (official pipeline:
            :func:`unlearnx.erase.last_word_rows`); ``None``: ``concept_keys``. Given with the guide's.
        initial_guide_keys: C_G₀, ``[n₀, d_in]`` rows aligned with ``initial_concept_keys`` (their original
            outputs are the initial edit's targets); ``None``: ``guide_keys``.
        initial_preserve_keys: C_P₀, ``[m₀, d_in]`` preserve rows of the initial edit (UCE's script: "");
            ``None`` (default): ``preserve_keys``.
        where: selector of the ``(d_in, *out)`` kernels to edit; default: cross-attention keys and values.
        epochs: number of RECE rounds (≥ 0; 0 is plain UCE).
        reg: λ_reg > 0 of the embedding derivation.
        erase_scale, preserve_scale, lamb: α ≥ 0, β ≥ 0, λ > 0 of the initial UCE erase.
        round_erase_scale, round_preserve_scale, round_lamb: α, β, λ of each round's erase.

    Returns:
        ``(new_params, history)``: ``params``' structure and dtypes, unselected leaves the same objects;
        float32 ``embeddings`` ``[epochs, n, d_in]`` (c′ per round), ``change`` ``[epochs + 1]``
        (‖K_after − K_before‖ / ‖K_before‖ over the kernels: UCE, then each round) and ``distance``
        ``[epochs + 1]`` (‖K_after − K_original‖ / ‖K_original‖).

    Raises:
        ValueError: ``where`` selecting nothing, bad kernels or key shapes, concept and guide rows that
            differ, only one of the initial concept/guide keys, bad scales, λ or λ_reg, negative ``epochs``,
            non-finite values, or a float32 overflow naming the quantity (values checked when not traced).
        TypeError: non-integer ``epochs``, non-floating kernels, traced scales (hyper-parameters are static).

    Examples:
        >>> import numpy as np; from unlearnx import erase
        >>> rng = np.random.default_rng(0)
        >>> params = {"attn2": {"to_k": {"kernel": rng.normal(size=(8, 4))},
        ...                     "to_v": {"kernel": rng.normal(size=(8, 6))}}}
        >>> nudity, space, empty = (rng.normal(size=(5, 8)) for _ in range(3))  # "nudity", " ", ""
        >>> erase_rows, guide_rows = erase.last_word_rows(nudity, space, concept_tokens=3, guide_tokens=2)
        >>> new, history = erase.rece(params, nudity, space, space, epochs=3,
        ...     initial_concept_keys=erase_rows, initial_guide_keys=guide_rows, initial_preserve_keys=empty)
        >>> history["embeddings"].shape, history["change"].shape
        ((3, 5, 8), (4,))

    References:
        Gong et al., *Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models*, ECCV 2024.
    """
    epochs = checks.static_int("epochs", epochs, low=0, high=checks.INT32_MAX)
    leaves, treedef, chosen, d_in = _selected_kernels(params, where)
    initial, rounds = _keys(d_in, concept_keys, guide_keys, preserve_keys, initial_concept_keys,
                            initial_guide_keys, initial_preserve_keys)  # fmt: skip
    hyper = _hyper(erase_scale=erase_scale, preserve_scale=preserve_scale, lamb=lamb, reg=reg,
                   round_erase_scale=round_erase_scale, round_preserve_scale=round_preserve_scale,
                   round_lamb=round_lamb)  # fmt: skip
    kernels = [jnp.asarray(leaves[i]) for i in chosen]
    edited, history = serially(rece_chain, kernels, initial, rounds, hyper, epochs=epochs)
    _check_edit(params, [leaves[i] for i in chosen], chosen, edited, history, (initial, rounds, hyper))
    new_leaves = dict(enumerate(leaves)) | dict(zip(chosen, edited, strict=True))
    return jax.tree_util.tree_unflatten(treedef, [new_leaves[i] for i in range(len(leaves))]), history


def _check_edit(params, originals, chosen, edited, history, inputs) -> None:
    """Raises on non-finite edited kernels or history from finite inputs, naming what overflowed."""
    if checks.is_traced((edited, history)):
        return
    cause = _RecePeaks(originals, *inputs)
    paths = [checks.path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    kernels = {paths[i]: kernel for i, kernel in zip(chosen, edited, strict=True)}
    checks.check_output("rece: the edited kernels", kernels, cause)
    checks.check_output("rece: the history", history, cause)


class _RecePeaks:
    """The overflow diagnosis of :func:`rece`, computed on the host only when its message is formatted."""

    def __init__(self, kernels, initial, rounds, hyper):
        self.args = (kernels, initial, rounds, hyper)

    def __str__(self) -> str:
        kernels, initial, rounds, hyper = self.args
        flat = [host64(k) for k in kernels]
        d_in = flat[0].shape[0]
        c, g, p = (
            np.concatenate([host64(a) if a.shape[0] else np.zeros((0, d_in)) for a in pair])
            for pair in zip(initial, rounds, strict=True)
        )
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
