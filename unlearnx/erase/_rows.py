"""The token rows that UCE's 2023 scripts (and so RECE's initial edit) erase: from the last word to the end.

The official UCE script (``train-scripts/train_erase.py`` of ``rohitgandikota/unified-concept-editing``,
commit 35e91e2, vendored by RECE as ``erase_methods/train_uce.py``) does not erase all 77 rows of a prompt.
For a concept prompt with t_c tokens (the attention-mask sum: BOS, the words, EOS) and a guide prompt with
t_g tokens, it starts each at its last word token, s = t − 2 (the BOS row when the prompt has no word, e.g.
the guide " "), and drops the longer tail so the two stay aligned row by row:

    f = max(s_c, s_g),   C_E = C[s_c : n − (f − s_c)],   C_G = G[s_g : n − (f − s_g)],

both of n − f rows (n = 77 for CLIP). The preserve prompts keep all their rows. RECE's rounds then derive
and erase on all n rows (see :func:`unlearnx.erase.rece`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from unlearnx import _validation as checks

__all__ = ["last_word_rows"]


def _check_prompt(name: str, keys: Any) -> jax.Array:
    keys = jnp.asarray(keys)
    if keys.ndim != 2 or keys.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [rows, d_in] matrix of token rows, got {keys.shape}")
    return keys


def last_word_rows(
    concept_keys: Any, guide_keys: Any, *, concept_tokens: int, guide_tokens: int
) -> tuple[jax.Array, jax.Array]:
    r"""The aligned erase rows of UCE 2023 and RECE's initial edit: from each prompt's last word token on.

    With s = tokens − 2 the index of the last word token of each prompt (BOS + words + EOS = tokens) and
    f = max(s_c, s_g), returns

    .. math::

      C_E = C[s_c : n - (f - s_c)], \qquad C_G = G[s_g : n - (f - s_g)],

    both of n − f rows, so that the concept's last word row is paired with the guide's last word row (its BOS
    row for the guide " ", which has no word token) and the tails (EOS, padding) follow in step.

    Args:
        concept_keys: C, the concept prompt's ``[n, d_in]`` token rows (e.g. CLIP's padded ``[77, 768]``).
        guide_keys: G, the guide prompt's ``[n, d_in]`` token rows, the same shape.
        concept_tokens: t_c, the concept prompt's unpadded token count including BOS and EOS (the
            tokenizer's attention-mask sum), 2 ≤ t_c ≤ n.
        guide_tokens: t_g, the same for the guide prompt.

    Returns:
        ``(erase_rows, guide_rows)``, two ``[n − f, d_in]`` arrays of the inputs' dtype: the
        ``initial_concept_keys`` and ``initial_guide_keys`` of :func:`unlearnx.erase.rece` (stack the pairs
        of several concepts with ``jnp.concatenate``).

    Raises:
        ValueError: keys that are not non-empty ``[rows, d_in]`` matrices of one shape, or token counts
            outside [2, n].
        TypeError: non-integer token counts (they are static).

    Examples:
        >>> import numpy as np
        >>> from unlearnx import erase
        >>> concept, guide = np.arange(12.0).reshape(6, 2), -np.arange(12.0).reshape(6, 2)
        >>> rows, targets = erase.last_word_rows(concept, guide, concept_tokens=3, guide_tokens=2)
        >>> rows[:, 0].tolist(), targets[:, 0].tolist()  # "nudity" rows 1..5 paired with " " rows 0..4
        ([2.0, 4.0, 6.0, 8.0, 10.0], [-0.0, -2.0, -4.0, -6.0, -8.0])

    References:
        Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024 (arXiv 2308.14761); Gong
        et al., "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models", ECCV 2024.
    """
    concept = _check_prompt("concept_keys", concept_keys)
    guide = _check_prompt("guide_keys", guide_keys)
    if guide.shape != concept.shape:
        raise ValueError(
            f"guide_keys must have concept_keys' shape (both are padded prompts): {guide.shape} vs "
            f"{concept.shape}"
        )
    n = concept.shape[0]
    t_c = checks.static_int("concept_tokens", concept_tokens, low=2, high=n)
    t_g = checks.static_int("guide_tokens", guide_tokens, low=2, high=n)
    s_c, s_g = t_c - 2, t_g - 2
    farthest = max(s_c, s_g)
    return concept[s_c : n - (farthest - s_c)], guide[s_g : n - (farthest - s_g)]
