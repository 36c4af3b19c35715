"""Tables and sample grids of the RECE erasure experiment (:mod:`experiments.rece_erase`)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from experiments import report as shared

_percent = functools.partial(shared.fmt, scale=100)  # the shared cell rule, in percent

COLUMNS = (
    ("erased_rate", "erased % ↓"),
    ("preserve_acc", "preserve acc % ↑"),
    ("preserve_both_acc", "preserve shape+colour % ↑"),
    ("kv_change", "ΔKV other prompts % ↓"),
    ("asr_derived", "ASR derived c′ % ↓"),
    ("asr_uce_derived", "ASR UCE's c′ % ↓"),
    ("asr_gradient", "ASR gradient % ↓"),
)
METRICS = tuple(key for key, _ in COLUMNS)


def table(metrics: dict[str, Any], timing: dict[str, Any], name: str) -> str:
    """The per-method table of one erased concept."""
    result = metrics["concepts"][name]
    seconds = timing["concepts"][name]
    rows = []
    for method, values in result["metrics"].items():
        edit = seconds[method]["edit"]
        rows.append(
            [
                method,
                *(_percent(values[key]) for key, _ in COLUMNS),
                "–" if method == "original" else f"{edit:.3f}",
            ]
        )
    return shared.markdown_table(["method", *(label for _, label in COLUMNS), "edit s"], rows)


def report(config, metrics: dict[str, Any], timing: dict[str, Any]) -> str:
    """The Markdown report: quality gate, one table per erased concept, and the settings."""
    gate, test = metrics["quality_gate"], metrics["classifier_test_acc"]
    lines = [
        "# Concept erasure on the shapes testbed: UCE, RECE, ESD-x",
        "",
        f"Testbed: {config.image_size}×{config.image_size} shapes {list(config.shapes)} × colours "
        f"{list(config.colours)}; UNet {metrics['num_params']['unet']:,} parameters (channels "
        f"{list(config.channels)}), text encoder {metrics['num_params']['text_encoder']:,}; "
        f"{config.steps} steps of batch {config.batch_size} "
        f"({timing['testbed_train_seconds']:.0f} s in this run; 0 when restored from the cache).",
        f"Sampling: DDIM {config.ddim_steps} steps, η = 0, guidance {config.guidance_scale}; "
        f'{config.samples_per_prompt} samples per prompt "a <colour> <shape>".',
        "",
        f"**Quality gate** (unedited model, all {len(metrics['prompts'])} prompts): prompted shape "
        f"{_percent(gate['shape_acc'])}%, prompted colour {_percent(gate['colour_acc'])}% "
        f"(bar: 80% each) — {'passed' if gate['passed'] else 'FAILED'}. Classifier on held-out real images: "
        f"shape {_percent(test['shape_acc'])}%, colour {_percent(test['colour_acc'])}%.",
        *shared.diverged_line(metrics["diverged"]),
        "",
    ]
    for name, result in metrics["concepts"].items():
        lines += [
            f"## Erasing {result['kind']} “{name}”",
            "",
            f"Keys: concept = rows of “{name}”, guide = rows of “” (empty), preserve = “” + "
            f"other {result['kind']}s (β = {result['preserve_scale']:.2f}).",
            "",
            table(metrics, timing, name),
            "",
        ]
    lines += [
        "Erased: samples of prompts naming the concept still classified as it. Preserve acc: the erased "
        "attribute (shape or colour) correct on the other concepts' prompts; shape+colour: both correct. "
        "ΔKV: relative change of the other prompts' attn2 key/value projections. ASR: samples classified "
        "as the concept when the attack's embedding is fed directly as conditioning (RECE closed form "
        f"c′ with λ_reg = {config.rece_reg}, derived against the row's model; UCE's c′: the one derived "
        "against the UCE edit, which the first RECE round erases; gradient: "
        f"{config.attack_steps} Adam steps, against the row's model). Edit seconds "
        "are wall time of the jitted edit after compilation (ESD-x: its fine-tuning loop, "
        f"{config.esd_steps} steps).",
        "",
    ]
    return "\n".join(lines)


def plot(config, prompts, grids: dict[str, Any], run_dir: str) -> None:
    """``samples_<concept>.png``: one row per method, one column per prompt (first sample), then the
    derived-embedding and gradient-attack samples (``grids``: per concept, per method, the ``samples`` and
    ``attack`` images of :func:`experiments.rece_erase.erase_concept`)."""
    titles = [prompt.removeprefix("a ") for prompt in prompts] + ["c′", "grad"]
    for name, by_method in grids.items():
        layout = {"nrows": len(by_method), "ncols": len(titles), "squeeze": False}
        size = (0.8 * len(titles), 0.9 * len(by_method) + 0.6)
        with shared.figure(run_dir, f"samples_{name}.png", dpi=110, figsize=size, **layout) as (figure, axes):
            for row, (method, grid) in enumerate(by_method.items()):
                attack = grid["attack"]
                images = [*grid["samples"][:: config.samples_per_prompt], attack[0], attack[len(attack) // 2]]
                for column, image in enumerate(images):
                    axis = axes[row, column]
                    axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
                    axis.set_xticks([])
                    axis.set_yticks([])
                    if row == 0:
                        axis.set_title(titles[column], fontsize=5)
                    if column == 0:
                        axis.set_ylabel(method, fontsize=6)
            figure.suptitle(f"erasing “{name}”", fontsize=8)
