"""Summaries, the Markdown report and the plots of the SSD forgetting experiment (``ssd_forget``, which
owns the method and metric lists)."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.report import diverged_line, figure, fmt, markdown_table, mean_std_plot, stat
from experiments.ssd_forget import METHODS
from experiments.ssd_phases import METRICS

COST_ROWS = ("retrain", "finetune", "neggrad+", "amnesiac", "bad_teacher", "ssd", "ssd (I_D cached)")
#: The METRICS' column headings.
LABELS = ("retain test acc %", "forget test acc %", "forget train acc %", "entropy MIA %", "loss MIA %")


def summarise(config, per_seed: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Folds the per-seed results into ``(metrics, timing)``: mean ± std over seeds for every metric and
    the α sweeps, medians over seeds for the times (the first seed compiles what the others reuse)."""
    runs = list(per_seed.values())
    classes: dict[str, Any] = {}
    seconds: dict[str, Any] = {}
    for cls in map(str, config.forget_classes):
        results = [run["classes"][cls] for run in runs]
        classes[cls] = {
            "per_seed": {seed: run["classes"][cls]["metrics"] for seed, run in per_seed.items()},
            "summary": {
                method: {metric: stat(r["metrics"][method][metric] for r in results) for metric in METRICS}
                for method in METHODS
            },
            "alpha": {seed: run["classes"][cls]["alpha"] for seed, run in per_seed.items()},
            "alpha_sweep": {
                key: [stat(r["alpha_sweep"][key][i] for r in results) for i in range(len(config.alpha_sweep))]
                for key in ("forget_test_acc", "retain_test_acc")
            },
            "passes": results[0]["passes"],
            "sizes": results[0]["sizes"],
        }
        seconds[cls] = {
            name: float(np.median([r["seconds"][name] for r in results])) for name in results[0]["seconds"]
        }
    class_sweep = None
    if runs[0]["class_sweep"] is not None:
        class_sweep = {
            method: {
                key: [
                    stat(column)
                    for column in zip(*(run["class_sweep"][method][key] for run in runs), strict=True)
                ]
                for key in ("forget_test_acc", "retain_test_acc")
            }
            for method in runs[0]["class_sweep"]
        }
    timing = {
        "per_seed": {
            seed: {c: r["seconds"] for c, r in run["classes"].items()} for seed, run in per_seed.items()
        },
        "median": seconds,
        "class_sweep": {seed: run.get("sweep_seconds") for seed, run in per_seed.items()},
    }
    diverged = sorted(
        {
            f"seed {seed} class {cls} {method}"
            for seed, run in per_seed.items()
            for cls, result in run["classes"].items()
            for method, values in result["metrics"].items()
            if np.isinf(values["retain_test_acc"])
        }
    )
    metrics = {"classes": classes, "class_sweep": class_sweep, "diverged": diverged}
    return metrics | {"class_bounds": _bounds_summary(runs)}, timing


def _bounds_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The class sweep's bound quantities (ssd_forget.class_sweep), mean ± std over seeds per class."""
    if runs[0].get("class_bounds") is None:
        return None
    first = runs[0]["class_bounds"]
    out: dict[str, Any] = {"ratio_bound": first["ratio_bound"]}
    for group in ("max_ratio", "alpha", "selected_fraction"):
        out[group] = {
            name: [
                stat(column) for column in zip(*(r["class_bounds"][group][name] for r in runs), strict=True)
            ]
            for name in first[group]
        }
    return out


def _pct(value: dict[str, float]) -> str:
    return fmt(value, scale=100.0)


def _class_section(config, cls: str, result: dict[str, Any], seconds: dict[str, float]) -> list[str]:
    summary, retrain_seconds = result["summary"], seconds["retrain"]
    rows = [
        [method]
        + [_pct(summary[method][m]) for m in METRICS]
        + [f"{seconds[method]:.3f}", f"{seconds[method] / retrain_seconds:.3f}"]
        for method in METHODS
    ]
    header = ["method", *LABELS, "time s", "time / retrain"]
    passes = result["passes"]
    cost_rows = [
        [
            name,
            f"{passes[name]:,}",
            f"{passes['retrain'] / passes[name]:.1f}×",
            f"{seconds[name]:.3f}",
            f"{retrain_seconds / seconds[name]:.0f}×",
        ]
        for name in COST_ROWS
    ]
    sweep = result["alpha_sweep"]
    sweep_rows = [
        [f"{alpha:g}", _pct(sweep["forget_test_acc"][i]), _pct(sweep["retain_test_acc"][i])]
        for i, alpha in enumerate(config.alpha_sweep)
    ]
    ssd, original = summary["ssd"], summary["original"]
    sizes = result["sizes"]
    checks = [
        f"- SSD (α = {config.alpha:g}, λ = {config.lam:g}) forget test accuracy "
        f"{_pct(ssd['forget_test_acc'])}% (target ≤ 5%); retain test accuracy drop "
        f"{(original['retain_test_acc']['mean'] - ssd['retain_test_acc']['mean']) * 100:.1f} points "
        "(target ≤ 5).",
        "- α per seed (ASSD on batch_sq / ASSD on empirical / LFSSD): "
        + ", ".join(
            f"{a['assd']:.1f} / {a['assd_empirical']:.2f} / {a['lfssd']:.2f}"
            for a in result["alpha"].values()
        )
        + f". |D|/|D_f| = {sizes['train'] / sizes['forget']:.1f}.",
        f"- Entropy MIA on D_f: original {_pct(original['entropy_mia'])}%, retrain "
        f"{_pct(summary['retrain']['entropy_mia'])}%, SSD {_pct(ssd['entropy_mia'])}%.",
    ]
    return [
        f"## Forget class {cls} (|D_f| = {sizes['forget']}, |D| = {sizes['train']})",
        markdown_table(header, rows),
        "### Cost (forward+backward example passes, and wall time)",
        markdown_table(
            ["method", "passes", "retrain / method (passes)", "time s", "retrain / method (time)"], cost_rows
        ),
        f"### α sweep (SSD with cached importances, λ = {config.lam:g})",
        markdown_table(["α", "forget test acc %", "retain test acc %"], sweep_rows),
        "### Checks",
        "\n".join(checks),
    ]


def report(config, metrics: dict[str, Any], timing: dict[str, Any]) -> str:
    """The Markdown report: per forget class the paper-shaped table, cost, α sweep and checks; then the
    class sweep and notes."""
    sections = [
        f"# SSD full-class forgetting — {config.dataset}, {config.model}",
        f"Seeds {list(config.seeds)}; mean ± std over seeds. Times are medians over seeds (the first seed "
        "compiles the steps the others reuse); SSD times are warm: I_D + I_f + dampening (`batch_sq`, batch "
        f"{config.importance_batch_size}). Entropy MIA: fraction of D_f an attacker trained on retain-train "
        "vs test entropies calls members (target: retrain's score); sklearn LogisticRegression("
        "class_weight='balanced', solver='lbfgs', C=1). Loss MIA: 5-fold cross-validated accuracy of a "
        "logistic regression telling D_f from as many forget-class test examples by loss (50% = chance). "
        f"I_D batches follow the `{config.importance_order}` order (see `importance_order`).",
        *diverged_line(metrics["diverged"]),
    ]
    for cls, result in metrics["classes"].items():
        sections += _class_section(config, cls, result, timing["median"][cls])
    if metrics["class_sweep"]:
        table = metrics["class_sweep"]
        methods = list(table)
        rows = [
            [str(c)]
            + [
                f"{_pct(table[m]['forget_test_acc'][c])} / {_pct(table[m]['retain_test_acc'][c])}"
                for m in methods
            ]
            for c in range(len(table[methods[0]]["forget_test_acc"]))
        ]
        sections += [
            "## Every class forgotten in turn (forget / retain test acc %, the same original models)",
            markdown_table(
                ["class", *(f"ssd (α = {config.alpha:g})" if m == "ssd" else m for m in methods)], rows
            ),
        ]
    if metrics.get("class_bounds"):
        sections += _bounds_section(config, metrics["class_bounds"])
    notes = [
        "- Because D includes D_f, the exact empirical Fisher has I_D ≥ (|D_f|/|D|)·I_f, so no parameter "
        "passes a fixed α ≥ |D|/|D_f|; with the reference's unshuffled, class-grouped D the batch estimators "
        "obey nearly the same bound (the forget batches reappear in D). On CIFAR-100 (|D|/|D_f| = 100) "
        "α = 10 is far below it; on 10-class data it is not.",
    ]
    images = ["![accuracy](accuracy.png)", "![alpha sweep](alpha_sweep.png)"]
    if metrics["class_sweep"]:
        images.append("![class sweep](class_sweep.png)")
    sections += ["## Notes", "\n".join(notes), "\n\n".join(images)]
    return "\n\n".join(sections) + "\n"


def _bounds_section(config, bounds: dict[str, Any]) -> list[str]:
    """Per class: |D|/|D_f|, the largest I_f/I_D per estimator, each method's α and selected %."""
    methods = list(bounds["alpha"])
    rows = []
    for c, bound in enumerate(bounds["ratio_bound"]):
        row = [str(c), f"{bound:.2f}"]
        row += [fmt(bounds["max_ratio"][est][c], digits=3) for est in ("empirical", "batch_sq")]
        for m in methods:
            selected = fmt(bounds["selected_fraction"][m][c], scale=100.0, digits=3)
            row.append(f"{fmt(bounds['alpha'][m][c], digits=3)} / {selected}")
        rows.append(row)
    header = ["class", "|D|/|D_f|", "max I_f/I_D (empirical)", "max I_f/I_D (batch_sq)"]
    header += [f"{m}: α / selected %" for m in methods]
    return [
        "## Where a fixed α can select anything (the bound)",
        "Because D includes D_f, the exact empirical Fisher obeys I_D ≥ (|D_f|/|D|)·I_f, so I_f/I_D ≤ "
        f"|D|/|D_f| for every parameter: with λ = {config.lam:g} a parameter is selected (and dampened) only "
        "if I_f > α·I_D, which no parameter passes once α ≥ |D|/|D_f|. The table gives, per forgotten "
        "class, that bound, the largest ratio each estimator reaches (the reference's class-grouped "
        "`batch_sq` batches nearly obey the same bound), and each method's α and the % of trainable "
        "parameters it selects.",
        markdown_table(header, rows),
    ]


def plot(config, metrics: dict[str, Any], run_dir: str) -> None:
    """``accuracy.png`` (retain/forget test accuracy per method, one panel per forget class),
    ``alpha_sweep.png`` (SSD accuracy against α, one line pair per forget class) and, with the class
    sweep, ``class_sweep.png``."""
    _plot_accuracy(config, metrics["classes"], run_dir)
    _plot_alpha_sweep(config, metrics["classes"], run_dir)
    if metrics["class_sweep"]:
        _plot_class_sweep(metrics["class_sweep"], run_dir)


def _plot_accuracy(config, classes: dict[str, Any], run_dir: str) -> None:
    shape = {"nrows": len(classes), "figsize": (10, 3.6 * len(classes)), "squeeze": False}
    with figure(run_dir, "accuracy.png", **shape) as (_, axes):
        positions = np.arange(len(METHODS))
        for ax, (cls, result) in zip(axes[:, 0], classes.items(), strict=True):
            summary = result["summary"]
            for offset, key in ((-0.2, "retain_test_acc"), (0.2, "forget_test_acc")):
                stats, label = [summary[m][key] for m in METHODS], f"{key.split('_')[0]} test"
                mean_std_plot(ax.bar, positions + offset, stats, scale=100, width=0.4, label=label)
            ax.set_xticks(positions, METHODS, rotation=30, ha="right")
            ax.set_ylabel("accuracy %")
            ax.set_ylim(0, 120)
            ax.set_title(f"Forgetting class {cls} ({config.dataset}, {config.model})")
            ax.legend(ncol=2, loc="upper right")


def _plot_alpha_sweep(config, classes: dict[str, Any], run_dir: str) -> None:
    alphas = config.alpha_sweep
    with figure(run_dir, "alpha_sweep.png", figsize=(6, 4)) as (_, ax):
        for cls, result in classes.items():
            sweep = result["alpha_sweep"]
            for key, style in (("forget_test_acc", "-"), ("retain_test_acc", "--")):
                label = f"class {cls} {key.split('_')[0]} test"
                mean_std_plot(ax.errorbar, alphas, sweep[key], scale=100, marker="o", ls=style, label=label)
        ax.axvline(config.alpha, color="grey", linestyle=":", label=f"α = {config.alpha:g}")
        ax.set_xscale("log")
        ax.set_xlabel("α (selection threshold)")
        ax.set_ylabel("accuracy %")
        ax.set_title(f"SSD α sweep, λ = {config.lam:g}")
        ax.legend(fontsize="small")


def _plot_class_sweep(table: dict[str, Any], run_dir: str) -> None:
    with figure(run_dir, "class_sweep.png", nrows=2, figsize=(9, 6), sharex=True) as (_, axes):
        num_classes = len(next(iter(table.values()))["forget_test_acc"])
        width = 0.8 / len(table)
        for i, (method, result) in enumerate(table.items()):
            positions = np.arange(num_classes) + (i - (len(table) - 1) / 2) * width
            for ax, key in zip(axes, ("forget_test_acc", "retain_test_acc"), strict=True):
                mean_std_plot(ax.bar, positions, result[key], scale=100, width=width, capsize=2, label=method)
        axes[0].set_ylabel("forget test acc %")
        axes[1].set_ylabel("retain test acc %")
        axes[1].set_xlabel("forgotten class")
        axes[1].set_xticks(np.arange(num_classes))
        axes[0].set_ylim(0, 130)
        axes[0].legend(ncol=len(table), fontsize="small", loc="upper center")
        axes[0].set_title("Each class forgotten in turn from the same original models")
