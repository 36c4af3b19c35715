"""The jitted computation behind :func:`unlearnx.erase.rece` (private): a chain of d_in × d_in steps, then
one product per kernel.

Every erase step multiplies every kernel on the left by one matrix I + D, D = α G⁻¹ Cᵀ (C_G − C), so after
the initial edit and r rounds K′_l = M K_l with M = I + D_total, and the sums of the embedding derivation
are Σ K′Kᵀ = M S and Σ K′K′ᵀ = M S Mᵀ with S = Σ K Kᵀ, formed once (:func:`unlearnx.erase._linalg.gram`,
exploiting its symmetry). Per round this costs three d_in³ products (M S Mᵀ, D·M S, D·M) and one
Cholesky solve of order d_in; the kernels are touched twice in all (S, then M K).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unlearnx.erase._checks import flat32
from unlearnx.erase._embedding import mapped_embedding
from unlearnx.erase._linalg import gram, hi_matmul
from unlearnx.erase._uce import uce_change

__all__ = ["rece_chain"]


def _step(keys, guide, preserve, erase_scale, preserve_scale, lamb) -> jax.Array:
    """D with UCE(K, keys, guide @ K, preserve) = (I + D) K for every K: D = α G⁻¹ keysᵀ (guide − keys),
    formed from its thin factors (which cancel heavily, so they are not used apart)."""
    left, right = uce_change(
        keys, preserve, guide - keys, erase_scale=erase_scale, preserve_scale=preserve_scale, lamb=lamb
    )
    return hi_matmul(left, right)


def _frobenius(edited, kernels) -> jax.Array:
    """‖K_after − K_before‖ / ‖K_before‖ over all kernels, by explicit sums (the no-round path)."""
    change = sum(jnp.sum(jnp.square(e - k)) for e, k in zip(edited, kernels, strict=True))
    return jnp.sqrt(change / sum(jnp.sum(jnp.square(k)) for k in kernels))


@functools.partial(jax.jit, static_argnames="epochs")
def rece_chain(originals, initial, rounds, hyper, *, epochs):
    """``(edited kernels, history)``: UCE keyed on ``initial`` = (C₀, C_G₀, C_P₀), then ``epochs`` rounds
    deriving c′ from ``rounds`` = (C, C_G, C_P)'s concept rows and erasing it towards C_G."""
    kernels = [flat32(k) for k in originals]
    initial = [a.astype(jnp.float32) for a in initial]
    concept, guide, preserve = (a.astype(jnp.float32) for a in rounds)
    total = _step(*initial, hyper["erase_scale"], hyper["preserve_scale"], hyper["lamb"])  # D_total = M − I
    if not epochs:
        edited = [k + hi_matmul(total, k) for k in kernels]
        change = _frobenius(edited, kernels)
        history = {
            "embeddings": jnp.zeros((0, *concept.shape), jnp.float32),
            "change": change[None],
            "distance": change[None],
        }
        return [e.reshape(k.shape).astype(k.dtype) for e, k in zip(edited, originals, strict=True)], history

    s = gram(kernels)
    s_trace = jnp.trace(s)
    identity = jnp.eye(s.shape[0], dtype=jnp.float32)

    def distance(mapped):  # ‖(M − I) K‖ / ‖K‖ over all kernels = sqrt(tr((M S − S)(M − I)ᵀ) / tr(S))
        return jnp.sqrt(jnp.sum((mapped - s) * total) / s_trace)

    # M S = Σ K′Kᵀ is formed from M once, then carried; M S Mᵀ = Σ K′K′ᵀ is formed from it each round (M
    # is near-singular after a few rounds, so low-rank updates of M S Mᵀ itself would cancel badly).
    mapped = hi_matmul(identity + total, s)
    embeddings, changes, distances = [], [distance(mapped)], []
    distances.append(changes[0])
    for r in range(epochs):
        current = hi_matmul(mapped, identity + total.T)
        if r:
            distances.append(distance(mapped))
        embedding = mapped_embedding(identity + total, mapped, current, concept, hyper["reg"])
        embeddings.append(embedding)
        step = _step(
            embedding,
            guide,
            preserve,
            hyper["round_erase_scale"],
            hyper["round_preserve_scale"],
            hyper["round_lamb"],
        )
        # M′ = (I + D) M, so M′ − I = total + D M and M′ S = M S + D (M S); the round's change
        # ‖D K′‖² = tr(D M S Mᵀ Dᵀ) = Σ (D M S) ⊙ (D M) reuses both products.
        step_mapped = hi_matmul(step, mapped)
        step_total = step + hi_matmul(step, total)
        changes.append(jnp.sqrt(jnp.sum(step_mapped * step_total) / jnp.trace(current)))
        total = total + step_total
        mapped = mapped + step_mapped
    distances.append(distance(mapped))
    edited = [
        hi_matmul(identity + total, k).reshape(o.shape).astype(o.dtype)  # M K: no separate K + D K pass
        for k, o in zip(kernels, originals, strict=True)
    ]
    history = {
        "embeddings": jnp.stack(embeddings),
        "change": jnp.stack(changes),
        "distance": jnp.stack(distances),
    }
    return edited, history
