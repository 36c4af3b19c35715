"""Summaries, the Markdown report and the plots of the sparse-training experiment (``granet_sparse``, which
owns the method list and passes its method descriptions to :func:`report`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from experiments.report import diverged_line, figure, fmt, markdown_table, mean_std_plot, scored, stat

SPARSITY_STATS = ("train_flops", "mask_sparsity", "param_sparsity")


def _key(sparsity: float) -> str:
    return f"{sparsity:g}"


def cells(config, method: str) -> tuple[float, ...]:
    """The target sparsities ``method`` was trained at (dense: only 0)."""
    return (0.0,) if method == "dense" else tuple(config.sparsities)


def summarise(config, runs: dict[str, dict[str, Any]], schedule, paths: dict[str, int]) -> dict[str, Any]:
    """``metrics.json``: the schedule, mean ± std over seeds per (method, sparsity), the mean sparsity curve,
    the first seed's per-layer mask sparsity, and every run."""
    first_seed = config.seeds[0]
    summary: dict[str, Any] = {}
    for method in config.methods:
        summary[method] = {}
        for sparsity in cells(config, method):
            group = [r for r in runs.values() if r["method"] == method and r["sparsity"] == sparsity]
            first = next(r for r in group if r["seed"] == first_seed)
            summary[method][_key(sparsity)] = {
                "test_acc": stat(scored(r["test_acc"], r["diverged"]) for r in group),
                **{name: stat(r[name] for r in group) for name in SPARSITY_STATS},
                "sparsity_curve": np.mean([r["sparsity_curve"] for r in group], axis=0).tolist(),
                "layer_mask_sparsity": first["layer_mask_sparsity"],
            }
    frequency = config.frequency
    return {
        "schedule": {
            **dataclasses.asdict(schedule),
            "lr_boundaries": list(schedule.lr_boundaries),
            "frequency": frequency,
            "pruning_events": schedule.prune_end_step // frequency,
            "granet_mask_updates": schedule.total_steps // frequency,
            "dst_mask_updates": schedule.dst_end_step // frequency,
        },
        "selected_sizes": paths,
        "summary": summary,
        "runs": runs,
        "diverged": sorted(label for label, run in runs.items() if run["diverged"]),
    }


def _table(config, summary, fmt) -> str:
    header = ["method", *(f"{s:.0%}" if s * 100 == int(s * 100) else f"{s:.1%}" for s in config.sparsities)]
    rows = []
    for method in config.methods:
        by_sparsity = summary[method]
        if method == "dense":
            rows.append([method, *[fmt(by_sparsity[_key(0.0)])] * len(config.sparsities)])
        else:
            rows.append([method, *(fmt(by_sparsity[_key(s)]) for s in config.sparsities)])
    return markdown_table(header, rows)


def _ranking(config, summary) -> list[str]:
    lines = []
    for sparsity in config.sparsities:
        scores = [(summary[m][_key(sparsity)]["test_acc"]["mean"], m) for m in config.methods if m != "dense"]
        ranked = sorted(((acc, m) for acc, m in scores if np.isfinite(acc)), reverse=True)
        line = " > ".join(f"{m} {acc * 100:.1f}" for acc, m in ranked)
        unranked = [m for acc, m in scores if not np.isfinite(acc)]  # diverged, or no run
        tail = f" (not ranked: {', '.join(unranked)})" if unranked else ""
        lines.append(f"- {sparsity:g}: {line}{tail}")
    return lines


def report(config, metrics: dict[str, Any], timing: dict[str, Any], descriptions: dict[str, str]) -> str:
    """The Markdown report: accuracy, training FLOPs and final-sparsity tables (methods × sparsities), the
    first seed's per-layer mask sparsity, the measured ranking and notes; ``descriptions`` (method -> what
    it is) makes the legend."""
    schedule, summary, sizes = metrics["schedule"], metrics["summary"], metrics["selected_sizes"]
    total = sum(sizes.values())
    legend = "; ".join(f"`{m}`: {descriptions[m]}" for m in config.methods)
    layer_header = ["method", "target", *(f"{path} ({size:,})" for path, size in sizes.items())]
    layer_rows = [
        [
            method,
            f"{s:g}",
            *(f"{summary[method][_key(s)]['layer_mask_sparsity'][p] * 100:.1f}" for p in sizes),
        ]
        for method in config.methods
        if method != "dense"
        for s in config.sparsities
    ]
    sections = [
        f"# Sparse training: GraNet and baselines — {config.dataset}, {config.model}",
        f"Seeds {list(config.seeds)}; mean ± std over seeds. {config.epochs} epochs × "
        f"{schedule['steps_per_epoch']} steps = {schedule['total_steps']} steps, batch {config.batch_size}; "
        f"SGD (momentum {config.momentum:g}, Nesterov), LR {config.lr:g} × 0.1 at steps "
        f"{schedule['lr_boundaries']}, weight decay {config.weight_decay:g}. "
        f"ΔT = {schedule['frequency']} steps: "
        f"GMP and GraNet prune from step 0 to t_f = {schedule['prune_end_step']} "
        f"({schedule['pruning_events']} pruning events), GraNet regrows at every one of its "
        f"{schedule['granet_mask_updates']} mask updates to the end; RigL and SET update "
        f"{schedule['dst_mask_updates']} times up to step {schedule['dst_end_step']}. Sparsified: "
        f"{len(sizes)} kernels, {total:,} weights; biases and norms stay dense. Masks start "
        f"{config.distribution.upper()} (static, SET, RigL, GraNet s_i = "
        f"{config.granet_initial_sparsity:g}).",
        legend + ".",
        *diverged_line(metrics["diverged"]),
        "## Test accuracy % (mean ± std)",
        _table(config, summary, lambda c: fmt(c["test_acc"], digits=2, scale=100)),
        "## Training FLOPs relative to dense",
        _table(config, summary, lambda c: fmt(c["train_flops"]["mean"], digits=3)),
        "## Final sparsity of the sparsified kernels, % (from the masks / exact zeros in the parameters)",
        _table(
            config,
            summary,
            lambda c: " / ".join(
                fmt(c[name]["mean"], digits=3, scale=100) for name in ("mask_sparsity", "param_sparsity")
            ),
        ),
        f"## Per-layer sparsity of the final masks, % (seed {config.seeds[0]})",
        markdown_table(layer_header, layer_rows),
        "## Measured ranking of the sparse methods (mean test accuracy %)",
        "\n".join(_ranking(config, summary)),
        "## Notes",
        "\n".join(
            [
                "- Training FLOPs: a step's forward + backward cost is taken ∝ the active weights of the "
                "sparsified kernels (each is used in one multiply-add forward and two backward), so the cost "
                "relative to dense is the density averaged over training: the mask density after each epoch, "
                "trapezoid-averaged over epochs from the initial mask (density 1 for dense-to-sparse GMP and "
                "GraNet). Ignored: biases and norms, the dense gradient a mask update needs once per ΔT, "
                "and, for convolutions, that weights of different layers are reused a different number of "
                "times.",
                "- Every sparse method ends with exactly its target number of zeros in the masks (global "
                "pruning keeps round((1 − s)·N); ERK rounds per tensor), and the parameters are exactly zero "
                "wherever the masks are; parameter sparsity above mask sparsity means active weights that "
                "are exactly 0 (regrown at zero and never moved since: their gradient is identically "
                "zero, e.g. into or out of a dead ReLU unit, which SET's random regrowth can pick).",
                "- GMP and GraNet prune globally on raw |w|, so their per-layer densities are learned; the "
                "others keep the ERK per-layer densities.",
                f"- Wall time of all runs: {timing['total']:.0f} s (compilation included; per run in "
                "`timing.json`)."
                + (
                    f" Resumed (not rerun): {len(timing['resumed_runs'])} runs."
                    if timing["resumed_runs"]
                    else ""
                ),
            ]
        ),
        "![accuracy vs sparsity](accuracy.png)\n\n![sparsity over training](sparsity_schedule.png)",
    ]
    return "\n\n".join(sections) + "\n"


def plot(config, metrics: dict[str, Any], run_dir: str) -> None:
    """``accuracy.png`` (test accuracy vs target sparsity, one line per method, error bars: std over seeds)
    and ``sparsity_schedule.png`` (mask sparsity after each epoch at ``config.plot_sparsity``, or the
    configured sparsity nearest to it)."""
    _plot_accuracy(config, metrics["summary"], run_dir)
    _plot_schedules(config, metrics["summary"], metrics["schedule"], run_dir)


def _plot_accuracy(config, summary: dict[str, Any], run_dir: str) -> None:
    sparsities = list(config.sparsities)
    positions = np.arange(len(sparsities))
    with figure(run_dir, "accuracy.png", figsize=(7, 4.5)) as (_, ax):
        for method in config.methods:
            if method == "dense":
                dense = summary["dense"][_key(0.0)]["test_acc"]
                ax.axhline(dense["mean"] * 100, color="black", linestyle="--", label="dense")
                ax.axhspan(
                    (dense["mean"] - dense["std"]) * 100, (dense["mean"] + dense["std"]) * 100, color="0.85"
                )
                continue
            stats = [summary[method][_key(s)]["test_acc"] for s in sparsities]
            mean_std_plot(ax.errorbar, positions, stats, scale=100, marker="o", label=method)
        ax.set_xticks(positions, [f"{s:g}" for s in sparsities])
        ax.set_xlabel("target sparsity")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{config.dataset}, {config.model}: accuracy vs sparsity ({len(config.seeds)} seeds)")
        ax.legend(fontsize="small")


def _plot_schedules(config, summary: dict[str, Any], schedule: dict[str, Any], run_dir: str) -> None:
    shown = min(config.sparsities, key=lambda s: abs(s - config.plot_sparsity))
    steps_per_epoch = schedule["steps_per_epoch"]
    styles = ("-", "--", ":", "-.")  # some schedules coincide (static/SET/RigL; GMP/GraNet s_i = 0)
    with figure(run_dir, "sparsity_schedule.png", figsize=(7, 4.5)) as (_, ax):
        for i, method in enumerate(config.methods):
            curve = summary[method][_key(0.0 if method == "dense" else shown)]["sparsity_curve"]
            ax.plot(
                np.arange(len(curve)),
                np.asarray(curve) * 100,
                marker="o.x+"[i % 4],
                markersize=4,
                linestyle=styles[i % len(styles)],
                label=method,
            )
        for step, text in ((schedule["prune_end_step"], "t_f"), (schedule["dst_end_step"], "RigL/SET end")):
            ax.axvline(step / steps_per_epoch, color="grey", linestyle=":")
            ax.text(step / steps_per_epoch, 2, f" {text}", color="grey", fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mask sparsity of the kernels %")
        ax.set_title(f"Sparsity over training, target {shown:g}")
        ax.legend(fontsize="small")
