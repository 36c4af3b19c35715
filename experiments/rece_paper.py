"""The RECE ``paper`` preset on a real Stable Diffusion v1.x UNet file: the official pipeline, checkpoint in
and out, without PyTorch (:func:`unlearnx.diffusers_io.rece_checkpoint`).

It reads the cross-attention key/value kernels of ``--unet_path`` (a diffusers ``.safetensors``) and the
prompts' CLIP states of ``--states_path`` (how to make that file: the :mod:`unlearnx.diffusers_io`
docstring), runs the UCE edit on the concept's rows from its last word token on and ``max(rece_epochs)``
RECE rounds, and writes ``run_dir/unet/diffusion_pytorch_model.safetensors``: the source with only those
kernels replaced, loadable by diffusers as it is. ``metrics.json`` records the edit (relative kernel change,
ΔKV on the preserve prompts, the derived c′'s distance from the concept). Sampling the I2P prompts and
scoring them with NudeNet happen in diffusers on the edited file (spec §5).
"""

from __future__ import annotations

import os
import time
from typing import Any

from experiments import runner
from unlearnx import diffusers_io


def main(config: Any, run_dir: str, settings: dict[str, float]) -> dict[str, Any]:
    """Edits ``config.unet_path`` with the official RECE pipeline (``settings``: the keyword arguments of
    :func:`unlearnx.erase.rece` but ``epochs``); writes the edited file, ``metrics.json``, ``timing.json``
    (the seconds of the whole read, edit and write) and ``report.md``.

    Raises:
      ValueError: ``unet_path`` or ``states_path`` unset (or unreadable: the message names the file).
    """
    if not config.unet_path or not config.states_path:
        raise ValueError(
            "backend 'sd-v1.4' needs --unet_path (a diffusers UNet .safetensors, e.g. "
            "CompVis/stable-diffusion-v1-4/unet/diffusion_pytorch_model.safetensors) and --states_path (an "
            ".npz of CLIP states; see the unlearnx.diffusers_io docstring)"
        )
    out = os.path.join(run_dir, "unet", "diffusion_pytorch_model.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    epochs, paths = max(config.rece_epochs, default=0), (config.unet_path, config.states_path, out)
    started = time.perf_counter()
    metrics = diffusers_io.rece_checkpoint(*paths, epochs=epochs, **settings)
    edit_seconds = time.perf_counter() - started
    keys = metrics["edited_keys"]
    report = "\n".join(
        [f"# RECE on {os.path.basename(config.unet_path)} ({len(keys)} kernels, {epochs} rounds)", "",
         *(f"- {name}: {value}" for name, value in metrics.items() if name != "edited_keys"),
         f"- edited file: `{out}`", ""]
    )  # fmt: skip
    runner.write_outputs(run_dir, metrics, {"edit_seconds": edit_seconds}, report)
    return metrics
