"""Closed-form concept erasure in cross-attention: UCE, RECE's adversarial embedding, and the RECE loop.

* :func:`uce` -- the UCE edit of one kernel,
  K_new = G⁻¹ (λ K + α C_Eᵀ V* + β C_Pᵀ C_P K), G = λ I + α C_Eᵀ C_E + β C_Pᵀ C_P;
* :func:`derive_embedding` -- c′ = (λ_reg I + Σ_l K′_l K′_lᵀ)⁻¹ (Σ_l K′_l K_lᵀ) c;
* :func:`rece` -- UCE then ``epochs`` rounds of (derive c′, erase c′) over every selected kernel of a tree
  (the initial edit may be keyed on other rows, e.g. :func:`last_word_rows`, as the official pipeline is);
* :func:`last_word_rows` -- the rows UCE's 2023 script erases: from the concept's last word token on;
* :data:`cross_attention_kv` (and ``cross_attention_k``, ``cross_attention_v``) -- the default selectors
  (``…/attn2/to_k|to_v/kernel``, maxdiffusion's ``…/attn2/key|value/kernel``).

Kernels are in Flax layout ``(d_in, d_out)`` (x ↦ x K); keys are token rows ``[n, d_in]``. Spec:
``papers/rece.md``.
"""

from unlearnx.erase._embedding import derive_embedding
from unlearnx.erase._rece import rece
from unlearnx.erase._rows import last_word_rows
from unlearnx.erase._selectors import (
    cross_attention_k,
    cross_attention_kv,
    cross_attention_v,
    sd_cross_attention_shapes,
)
from unlearnx.erase._uce import uce

__all__ = [
    "cross_attention_k",
    "cross_attention_kv",
    "cross_attention_v",
    "derive_embedding",
    "last_word_rows",
    "rece",
    "sd_cross_attention_shapes",
    "uce",
]
