"""The official RECE pipeline on a Stable Diffusion v1.x UNet file, file to file (re-exported by
:mod:`unlearnx.diffusers_io`, whose docstring says how to make the prompts' states file)."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from unlearnx import erase
from unlearnx._text_states import check_file, load_text_states
from unlearnx.eval.erasure import kv_output_change

__all__ = ["rece_checkpoint"]

_STATES = ("concept", "guide", "preserve", "initial_preserve")


def _official_keys(states_path: str | os.PathLike) -> tuple[tuple[Any, Any, Any], dict[str, Any]]:
    """``((concept, guide, preserve), initial)``: the rows :func:`unlearnx.erase.rece` takes in the official
    pipeline, from the states file; ``initial`` holds its ``initial_*_keys`` (the concept's and the guide's
    rows from the last word token on, :func:`unlearnx.erase.last_word_rows`, and ``initial_preserve``)."""
    states = load_text_states(states_path, _STATES, flatten=False)
    with np.load(check_file("states_path", states_path)) as archive:
        missing = [name for name in ("concept_tokens", "guide_tokens") if name not in archive]
        if missing:
            raise ValueError(f"rece_checkpoint: {os.fspath(states_path)!r} lacks the token counts {missing}")
        tokens = {f"{name}_tokens": int(archive[f"{name}_tokens"][0]) for name in ("concept", "guide")}
    concept, guide = states["concept"][0], states["guide"][0]
    preserve, initial_preserve = (states[name].reshape(-1, concept.shape[-1]) for name in _STATES[2:])
    rows, targets = erase.last_word_rows(concept, guide, **tokens)
    initial = {"initial_concept_keys": rows, "initial_guide_keys": targets}
    return (concept, guide, preserve), {**initial, "initial_preserve_keys": initial_preserve}


def rece_checkpoint(
    unet_path: str | os.PathLike,
    states_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    epochs: int = 3,
    reg: float = 0.1,
    **scales: float,
) -> dict[str, Any]:
    r"""Erases a concept from a Stable Diffusion v1.x UNet file by the official RECE pipeline, file to file.

    The cross-attention key/value kernels K of ``unet_path`` (:func:`read_cross_attention`, float32, Flax
    layout ``[in, out]``) first take the UCE edit of the concept's rows from its last word token on, C₀,
    towards the guide's aligned rows C_G₀ (:func:`unlearnx.erase.last_word_rows`), preserving the rows C_P₀
    of ``initial_preserve``:

    .. math::

      K \leftarrow K + G_0^{-1} α C_0^⊤ (C_{G,0} K - C_0 K), \qquad
      G_0 = λ I + α C_0^⊤ C_0 + β C_{P,0}^⊤ C_{P,0};

    then each of ``epochs`` rounds derives c′ = (λ_reg I + Σ K′K′ᵀ)⁻¹ (Σ K′Kᵀ) c from every row c of the
    concept prompt and erases it the same way towards the guide's rows, preserving ``preserve``'s
    (:func:`unlearnx.erase.rece`). :func:`write_cross_attention` writes the result to ``out_path``.

    Args:
      unet_path: a diffusers ``UNet2DConditionModel`` ``.safetensors`` file, e.g. SD v1.4's UNet.
      states_path: an ``.npz`` of CLIP states ``concept``, ``guide`` (one prompt each), ``preserve`` and
        ``initial_preserve``, each ``[N, L, d]``, and the token counts ``concept_tokens`` / ``guide_tokens``
        (how to make it: the module docstring).
      out_path: the edited file; must not be ``unet_path``.
      epochs: RECE rounds after the initial edit (≥ 0; the paper: 3).
      reg: λ_reg > 0 of the embedding derivation.
      **scales: α, β, λ of the initial edit (``erase_scale``, ``preserve_scale``, ``lamb``) and of each
        round (``round_erase_scale``, …), passed to :func:`unlearnx.erase.rece` (its defaults otherwise).

    Returns:
      The edit's record: ``edited_keys`` (the replaced safetensors keys, sorted), ``rece_rounds``,
      ``initial_rows`` (rows of the initial edit), ``kernel_relative_change`` (‖K′ − K‖ / ‖K‖ over the
      kernels), ``kv_change_preserve`` (ΔKV on the preserve prompts, :func:`unlearnx.eval.kv_output_change`)
      and ``c_prime_distance`` (‖c′ − c‖ / ‖c‖ of the c′ derived against the final edit).

    Raises:
      FileNotFoundError: ``unet_path`` or ``states_path`` is not a file, or ``out_path``'s folder is missing.
      ValueError: a UNet file without cross-attention kernels, a states file without one of the arrays above
        (named), bad hyper-parameters (:func:`unlearnx.erase.rece`), or ``out_path`` naming ``unet_path``.
      TypeError: a keyword in ``scales`` that :func:`unlearnx.erase.rece` does not take.

    Example:
      >>> import numpy as np, safetensors.numpy, tempfile, os
      >>> from unlearnx import diffusers_io
      >>> folder, rng = tempfile.mkdtemp(), np.random.default_rng(0)
      >>> unet, states = os.path.join(folder, "unet.safetensors"), os.path.join(folder, "states.npz")
      >>> block = "mid_block.attentions.0.transformer_blocks.0.attn2"
      >>> safetensors.numpy.save_file({f"{block}.to_{kv}.weight": rng.normal(size=(6, 8)).astype(np.float16)
      ...                              for kv in "kv"}, unet)
      >>> prompts = {name: rng.normal(size=(1, 5, 8)) for name in ("concept", "guide", "initial_preserve")}
      >>> np.savez(states, **prompts, preserve=prompts["guide"], concept_tokens=[3], guide_tokens=[2])
      >>> record = diffusers_io.rece_checkpoint(unet, states, os.path.join(folder, "edited.safetensors"))
      >>> record["rece_rounds"], record["initial_rows"], len(record["edited_keys"])
      (3, 4, 2)

    References:
      Gong et al., "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models", ECCV 2024.
    """
    from unlearnx.diffusers_io import read_cross_attention, write_cross_attention  # it re-exports this module

    original = read_cross_attention(unet_path, dtype=jnp.float32)
    rows, initial = _official_keys(states_path)
    edited, history = erase.rece(original, *rows, epochs=epochs, reg=reg, **initial, **scales)
    (concept, _, preserve), keys = rows, write_cross_attention(unet_path, edited, out_path)
    c_prime = erase.derive_embedding(edited, original, concept, reg=reg)  # only the K/V kernels are read
    return {
        "edited_keys": keys,
        "rece_rounds": epochs,
        "initial_rows": int(initial["initial_concept_keys"].shape[0]),
        "kernel_relative_change": float(history["distance"][-1]),
        "kv_change_preserve": kv_output_change(original, edited, preserve),
        "c_prime_distance": float(np.linalg.norm(np.asarray(c_prime) - concept) / np.linalg.norm(concept)),
    }
