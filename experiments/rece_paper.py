"""The RECE ``paper`` preset on a real Stable Diffusion v1.x UNet file: the official pipeline, checkpoint in
and out (:mod:`unlearnx.diffusers_io`; no PyTorch).

1. Read the 32 cross-attention key/value kernels of ``--unet_path`` (a diffusers ``.safetensors``).
2. Read the prompts' CLIP states from ``--states_path`` (``concept``, ``guide``, ``preserve``,
   ``initial_preserve`` and the token counts ``concept_tokens``/``guide_tokens``; how to make the file: the
   :mod:`unlearnx.diffusers_io` docstring).
3. The official RECE pipeline: the UCE edit on the rows from the concept's last word token on
   (:func:`unlearnx.erase.last_word_rows`), then ``max(rece_epochs)`` rounds that derive c′ and erase it on
   full rows (:func:`unlearnx.erase.rece`).
4. Write ``run_dir/unet/diffusion_pytorch_model.safetensors``: the source with only those kernels replaced,
   loadable by diffusers as it is; ``metrics.json`` records the edit (relative kernel change, ΔKV on the
   preserve prompts, the derived c′'s distance from the concept). Sampling the I2P prompts and scoring them
   with NudeNet happen in diffusers on the edited file (spec §5).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from experiments import runner
from unlearnx import diffusers_io, erase
from unlearnx import eval as metrics_lib

STATES = ("concept", "guide", "preserve", "initial_preserve")


def main(config: Any, run_dir: str) -> dict[str, Any]:
    """Edits ``config.unet_path`` with the official RECE pipeline; writes the edited file, ``metrics.json``,
    ``timing.json`` and ``report.md``.

    Raises:
      ValueError: ``unet_path`` or ``states_path`` unset (or unreadable: the message names the file).
    """
    if not config.unet_path or not config.states_path:
        raise ValueError(
            "backend 'sd-v1.4' needs --unet_path (a diffusers UNet .safetensors, e.g. "
            "CompVis/stable-diffusion-v1-4/unet/diffusion_pytorch_model.safetensors) and --states_path (an "
            ".npz of CLIP states; see the unlearnx.diffusers_io docstring)"
        )
    started = time.perf_counter()
    original = diffusers_io.read_cross_attention(config.unet_path, dtype=jnp.float32)
    states = diffusers_io.load_text_states(config.states_path, STATES, flatten=False)
    with np.load(config.states_path) as counts:
        tokens = {name: int(counts[f"{name}_tokens"][0]) for name in ("concept", "guide")}
    concept, guide = states["concept"][0], states["guide"][0]
    preserve = states["preserve"].reshape(-1, concept.shape[-1])
    rows, targets = erase.last_word_rows(
        concept, guide, concept_tokens=tokens["concept"], guide_tokens=tokens["guide"]
    )
    epochs = max(config.rece_epochs, default=0)
    rounds = {"reg": config.rece_reg, "round_erase_scale": config.round_erase_scale}
    rounds.update(round_preserve_scale=config.round_preserve_scale, round_lamb=config.round_lamb)
    uce = {"erase_scale": config.uce_erase_scale, "preserve_scale": config.uce_preserve_scale or 1.0}
    edited, history = erase.rece(original, concept, guide, preserve, epochs=epochs, initial_concept_keys=rows,
                           initial_guide_keys=targets, lamb=config.uce_lamb,
                           initial_preserve_keys=states["initial_preserve"].reshape(-1, concept.shape[-1]),
                           **uce, **rounds)  # fmt: skip
    edit_seconds = time.perf_counter() - started
    out = os.path.join(run_dir, "unet", "diffusion_pytorch_model.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    keys = diffusers_io.write_cross_attention(config.unet_path, edited, out)
    c_prime = erase.derive_embedding(edited, original, concept, reg=config.rece_reg)  # only K/V kernels read
    metrics = {
        "edited_keys": list(keys),
        "rece_rounds": epochs,
        "initial_rows": int(rows.shape[0]),
        "kernel_relative_change": float(history["distance"][-1]),  # ‖K′ − K‖ / ‖K‖ over the 32 kernels
        "kv_change_preserve": metrics_lib.kv_output_change(original, edited, preserve),
        "c_prime_distance": float(np.linalg.norm(np.asarray(c_prime) - concept) / np.linalg.norm(concept)),
    }
    report = "\n".join(
        [f"# RECE on {os.path.basename(config.unet_path)} ({len(keys)} kernels, {epochs} rounds)", "",
         *(f"- {name}: {value}" for name, value in metrics.items() if name != "edited_keys"),
         f"- edited file: `{out}`", ""]
    )  # fmt: skip
    runner.write_outputs(run_dir, metrics, {"edit_seconds": edit_seconds}, report)
    return metrics
