"""Summaries, the Markdown report and the plots of the permuted-task study (``powerlaw_rehearsal``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.report import diverged_line, figure, fmt, markdown_table, mean_std_plot, scored, stat

METRICS = ("acc", "bwt", "fwt", "forgetting")


def _stats(entries) -> dict[str, Any]:
    """Mean ± std over seeds of every metric; a diverged seed makes it diverged (:func:`report.scored`)."""
    entries = list(entries)
    return {name: stat(scored(entry[name], entry["diverged"]) for entry in entries) for name in METRICS}


def summarise(config, runs: dict[str, dict[str, Any]], sweeps: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: per method the mean ± std of every metric, the mean R and facilitation curves, and
    every seed's run (R, b̄, rehearsal counts per phase, ...); the sweeps' metrics per cell."""
    summary = {}
    for method, by_seed in runs.items():
        seeds = list(by_seed.values())
        summary[method] = {
            **_stats([{**run["metrics"], "diverged": run["diverged"]} for run in seeds]),
            "R_mean": np.mean([np.asarray(run["R"], float) for run in seeds], axis=0),  # null: NaN
            **{
                key: [stat(run[key][t] for run in seeds) for t in range(config.num_tasks)]
                for key in ("steps_to_threshold", "first_epoch_acc", "aulc")
            },
        }
    sweep_summary = {
        axis: {
            value: {method: _stats(by_seed.values()) for method, by_seed in cell.items()}
            for value, cell in cells.items()
        }
        for axis, cells in sweeps.items()
    }
    diverged = [f"{method}-seed{seed}" for method, by_seed in runs.items() for seed, run in by_seed.items()
                if run["diverged"]]  # fmt: skip
    for axis, cells in sweeps.items():
        for value, cell in cells.items():
            diverged += [f"sweep-{axis}={value}-{method}-seed{seed}" for method, by_seed in cell.items()
                         for seed, m in by_seed.items() if m["diverged"]]  # fmt: skip
    return {"summary": summary, "runs": runs, "sweeps": sweep_summary, "diverged": diverged}


def _setting(config) -> str:
    """The report's first paragraph: data, model, training and the rehearsal setting."""
    layers = getattr(config, "hidden_layers", 2)
    dropout = getattr(config, "dropout", 0.0)
    extras = ["BatchNorm"] if getattr(config, "batch_norm", False) else []
    extras += [f"dropout {dropout:g}"] if dropout else []
    model = f"{config.model} {layers} × {config.width}" + (f" ({', '.join(extras)})" if extras else "")
    pad = getattr(config, "pad_to", None)
    text = (
        f"{config.num_tasks} tasks (task 0 unpermuted){f', images padded to {pad} × {pad}' if pad else ''}, "
        f"{model}, Adam {config.lr:g}, {config.epochs} epochs of batch {config.batch_size} per task, "
        f"seeds {list(config.seeds)}. "
    )
    if getattr(config, "new_count", None) is None:
        text += (
            f"Rehearsal budget B = {config.budget} examples per phase for every schedule (memories of "
            f"{config.memory_size} per task; clock: time since first learned, last_seen[i] = i). "
        )
    else:
        text += (
            f"Count-matrix environments: n₀ = {config.new_count:,} examples of the new task per phase, "
            f"replay drawn from each task's training split; budgeted schedules replay ⌊r·n₀⌋ per phase "
            f"(exponential λ = {config.rate:g}; unrestricted power law n₀·((a + c)/c)^−p, "
            f"c = {config.unrestricted_offset:g}, p = {config.unrestricted_decay:g}). "
        )
    return text + (
        f"EWC λ = {config.ewc_strength:g} (empirical Fisher), online EWC γ = {config.online_decay:g}, "
        f"SI c = {config.si_strength:g}, ξ = {config.si_damping:g}. Not tuned."
    )


def report(config, metrics: dict[str, Any], timing: dict[str, Any], environment: list[str] = ()) -> str:
    """The Markdown report; ``environment`` holds the count-matrix mode's section (tables by budget)."""
    summary = metrics["summary"]
    lines = [
        f"# Power-law rehearsal on permuted {config.dataset}",
        "",
        _setting(config),
        *diverged_line(metrics["diverged"]),
        "",
        *([*environment, ""] if environment else []),
        "## ACC / BWT / FWT / forgetting, % (mean ± std over seeds)",
        "",
        markdown_table(
            ("method", "ACC", "BWT", "FWT", "forgetting"),
            [[method, *(fmt(summary[method][name], scale=100) for name in METRICS)] for method in summary],
        ),
        "",
        f"## Forward facilitation: steps to {config.threshold:.0%} probe accuracy on each new task (mean)",
        "",
        markdown_table(
            ("method", *(f"t{t}" for t in range(config.num_tasks))),
            [
                [
                    method,
                    *(fmt(s["mean"], digits=0) for s in summary[method]["steps_to_threshold"]),
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
            markdown_table(
                ("method", *values),
                [[m, *(fmt(cells[v][m]["acc"], scale=100) for v in values)] for m in methods],
            )
        )
    lines += ["", f"Wall time: {timing['total']:.1f} s over {len(timing['per_run'])} runs.", ""]
    return "\n".join(lines)


def plot(config, metrics: dict[str, Any], run_dir: str) -> None:
    """``accuracy_matrix.png`` (mean R per method), ``task0_accuracy.png``, ``facilitation.png`` and, if
    run, ``sweeps.png``."""
    summary = metrics["summary"]
    methods = list(summary)
    markers = "o.x+"
    columns = min(3, len(methods))
    rows = -(-len(methods) // columns)
    # A narrow last column holds the colour bar (so the grid stays compatible with tight_layout).
    grid = {
        "nrows": rows,
        "ncols": columns + 1,
        "figsize": (4 * columns + 0.8, 3.6 * rows),
        "squeeze": False,
        "gridspec_kw": {"width_ratios": [1.0] * columns + [0.06]},
    }
    with figure(run_dir, "accuracy_matrix.png", dpi=100, **grid) as (fig, axes):
        panels = list(axes[:, :columns].flat)
        for ax, method in zip(panels, methods, strict=False):
            image = ax.imshow(np.asarray(summary[method]["R_mean"]) * 100, vmin=0, vmax=100, cmap="viridis")
            ax.set_title(method, fontsize="small")
            ax.set_xlabel("evaluated task j")
            ax.set_ylabel("trained through task i")
        for ax in [*panels[len(methods) :], *axes[1:, columns]]:
            ax.axis("off")
        fig.colorbar(image, cax=axes[0, columns], label="test accuracy %")

    with figure(run_dir, "task0_accuracy.png", figsize=(7, 4.5)) as (fig, ax):
        for i, method in enumerate(methods):
            ax.plot(np.asarray(summary[method]["R_mean"])[:, 0] * 100, marker=markers[i % 4], label=method)
        ax.set_xlabel("phase (trained through task i)")
        ax.set_ylabel("test accuracy on task 0 %")
        ax.legend(fontsize="small")

    with figure(run_dir, "facilitation.png", ncols=2, figsize=(12, 4.5)) as (fig, (left, right)):
        for i, method in enumerate(methods):
            steps = [s["mean"] for s in summary[method]["steps_to_threshold"]]
            first = [s["mean"] * 100 for s in summary[method]["first_epoch_acc"]]
            left.plot(steps, marker=markers[i % 4], label=method)
            right.plot(first, marker=markers[i % 4], label=method)
        left.set_xlabel("task")
        left.set_ylabel(f"steps to {config.threshold:.0%} probe accuracy")
        right.set_xlabel("task")
        right.set_ylabel("new-task test accuracy after epoch 1 %")
        left.legend(fontsize="small")
    if metrics["sweeps"]:
        _plot_sweeps(config, summary, metrics["sweeps"], run_dir)


def _plot_sweeps(config, summary: dict[str, Any], sweeps: dict[str, Any], run_dir: str) -> None:
    """``sweeps.png``: ACC against each swept axis (the default setting's point from the main runs)."""
    defaults = {"num_tasks": config.num_tasks, "width": config.width, "budget": config.budget}
    shape = {"ncols": len(sweeps), "figsize": (5 * len(sweeps), 4), "squeeze": False}
    with figure(run_dir, "sweeps.png", **shape) as (fig, axes):
        for ax, (axis, cells) in zip(axes[0], sweeps.items(), strict=True):
            for method in config.sweep_methods:
                points = {float(v): cell[method]["acc"] for v, cell in cells.items()}
                if method in summary:
                    points[float(defaults[axis])] = summary[method]["acc"]
                xs = sorted(points)
                mean_std_plot(ax.errorbar, xs, [points[x] for x in xs], scale=100, marker="o", label=method)
            ax.set_xlabel(axis)
            ax.set_ylabel("ACC %")
        axes[0][0].legend(fontsize="small")
