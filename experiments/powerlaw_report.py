"""Summaries, the Markdown report and the plots of the permuted-task study (``powerlaw_rehearsal``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from experiments import runner

METHODS = (
    "naive",
    "uniform",
    "exponential",
    "power_law_0.5",
    "power_law_1",
    "ewc",
    "online_ewc",
    "si",
    "power_law_1+ewc",
)
METRICS = ("acc", "bwt", "fwt", "forgetting")


def _stat(values) -> dict[str, float]:
    mean, std = runner.mean_std(values)
    return {"mean": mean, "std": std}


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def summarise(config, runs: dict[str, dict[str, Any]], sweeps: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: per method the mean ± std of every metric, the mean R and facilitation curves, and
    every seed's run (R, b̄, rehearsal counts per phase, ...); the sweeps' metrics per cell."""
    summary = {}
    for method, by_seed in runs.items():
        seeds = list(by_seed.values())
        summary[method] = {
            **{name: _stat(run["metrics"][name] for run in seeds) for name in METRICS},
            "R_mean": np.mean([run["R"] for run in seeds], axis=0),
            "steps_to_threshold": [
                _stat(_nan(run["steps_to_threshold"][t]) for run in seeds) for t in range(config.num_tasks)
            ],
            "first_epoch_acc": [
                _stat(run["first_epoch_acc"][t] for run in seeds) for t in range(config.num_tasks)
            ],
            "aulc": [_stat(run["aulc"][t] for run in seeds) for t in range(config.num_tasks)],
        }
    sweep_summary = {
        axis: {
            value: {
                method: {name: _stat(m[name] for m in by_seed.values()) for name in METRICS}
                for method, by_seed in cell.items()
            }
            for value, cell in cells.items()
        }
        for axis, cells in sweeps.items()
    }
    return {"summary": summary, "runs": runs, "sweeps": sweep_summary}


def _fmt(stat: dict[str, float], scale: float = 100.0) -> str:
    if stat["mean"] is None or not np.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def report(config, metrics: dict[str, Any], timing: dict[str, Any]) -> str:
    summary = metrics["summary"]
    lines = [
        f"# Power-law rehearsal on permuted {config.dataset}",
        "",
        f"{config.num_tasks} tasks (task 0 unpermuted), {config.model} 2 × {config.width}, "
        f"Adam {config.lr:g}, "
        f"{config.epochs} epochs of batch {config.batch_size} per task, seeds {list(config.seeds)}. "
        f"Rehearsal budget B = {config.budget} examples per phase for every schedule (memories of "
        f"{config.memory_size} per task; clock: time since first learned, last_seen[i] = i). "
        f"EWC λ = {config.ewc_strength:g} (empirical Fisher), online EWC γ = {config.online_decay:g}, "
        f"SI c = {config.si_strength:g}, ξ = {config.si_damping:g}. Not tuned.",
        "",
        "## ACC / BWT / FWT / forgetting, % (mean ± std over seeds)",
        "",
        runner.markdown_table(
            ("method", "ACC", "BWT", "FWT", "forgetting"),
            [[method, *(_fmt(summary[method][name]) for name in METRICS)] for method in summary],
        ),
        "",
        f"## Forward facilitation: steps to {config.threshold:.0%} probe accuracy on each new task (mean)",
        "",
        runner.markdown_table(
            ("method", *(f"t{t}" for t in range(config.num_tasks))),
            [
                [
                    method,
                    *(
                        "n/a" if not np.isfinite(s["mean"]) else f"{s['mean']:.0f}"
                        for s in summary[method]["steps_to_threshold"]
                    ),
                ]
                for method in summary
            ],
        ),
    ]
    for axis, cells in metrics["sweeps"].items():
        lines += ["", f"## Sweep over {axis}: ACC % (other axes at their defaults)", ""]
        values = list(cells)
        methods = list(next(iter(cells.values())))
        lines.append(
            runner.markdown_table(
                ("method", *values), [[m, *(_fmt(cells[v][m]["acc"]) for v in values)] for m in methods]
            )
        )
    lines += ["", f"Wall time: {timing['total']:.1f} s over {len(timing['per_run'])} runs.", ""]
    return "\n".join(lines)


def plot(config, metrics: dict[str, Any], run_dir: str) -> None:
    """``accuracy_matrix.png`` (mean R per method), ``task0_accuracy.png``, ``facilitation.png`` and, if
    run, ``sweeps.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = metrics["summary"]
    methods = list(summary)
    columns = min(3, len(methods))
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods, strict=False):
        image = ax.imshow(np.asarray(summary[method]["R_mean"]) * 100, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(method, fontsize="small")
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("trained through task i")
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="test accuracy %")
    fig.savefig(os.path.join(run_dir, "accuracy_matrix.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(methods):
        ax.plot(np.asarray(summary[method]["R_mean"])[:, 0] * 100, marker="o.x+"[i % 4], label=method)
    ax.set_xlabel("phase (trained through task i)")
    ax.set_ylabel("test accuracy on task 0 %")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "task0_accuracy.png"), dpi=120)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, method in enumerate(methods):
        steps = [s["mean"] for s in summary[method]["steps_to_threshold"]]
        first = [s["mean"] * 100 for s in summary[method]["first_epoch_acc"]]
        left.plot(steps, marker="o.x+"[i % 4], label=method)
        right.plot(first, marker="o.x+"[i % 4], label=method)
    left.set_xlabel("task")
    left.set_ylabel(f"steps to {config.threshold:.0%} probe accuracy")
    right.set_xlabel("task")
    right.set_ylabel("new-task test accuracy after epoch 1 %")
    left.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "facilitation.png"), dpi=120)
    plt.close(fig)

    sweeps = metrics["sweeps"]
    if not sweeps:
        return
    defaults = {"num_tasks": config.num_tasks, "width": config.width, "budget": config.budget}
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
    for ax, (axis, cells) in zip(axes[0], sweeps.items(), strict=True):
        for method in config.sweep_methods:
            points = {float(v): cell[method]["acc"] for v, cell in cells.items()}
            if method in summary:
                points[float(defaults[axis])] = summary[method]["acc"]
            xs = sorted(points)
            ax.errorbar(
                xs,
                [points[x]["mean"] * 100 for x in xs],
                yerr=[points[x]["std"] * 100 for x in xs],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xlabel(axis)
        ax.set_ylabel("ACC %")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "sweeps.png"), dpi=120)
    plt.close(fig)
