"""The Markdown report and plots of the RESTOR experiment (``restor_recovery``).

Verdicts are measured, with fixed thresholds stated in the report: a run *recovers* when R ≥ 0.25 (a quarter
of the accuracy the corruption destroyed is back), *only forgets* when F ≥ 0.5 and R < 0.25, and *collapses*
when its accuracy on non-target people falls below half of θ_clean's.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from experiments import runner

RECOVERED_R = 0.25
FORGOT_F = 0.5
COLLAPSE_FRACTION = 0.5
VARIANTS = ("doc/full", "span/full", "doc/ssd_local", "span/ssd_local")


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _row(name: str, m: dict[str, Any]) -> list[str]:
    return [
        name,
        _fmt(m["acc_correct"]),
        _fmt(m["rate_corrupted"]),
        _fmt(m.get("recovery")),
        _fmt(m.get("forgetting")),
        _fmt(m["acc_nontarget"]),
        _fmt(m["acc_interleaved"]),
        _fmt(m["heldout_ppl"]),
        _fmt(m.get("confidence_corr")),
    ]


def _utility(m: dict[str, Any]) -> float | None:
    return m["acc_nontarget"] if m["acc_nontarget"] is not None else m["acc_interleaved"]


def verdict(m: dict[str, Any], corrupted: dict[str, Any]) -> str:
    """``recovered`` / ``forgot only`` / ``neither``, with ``, collapsed`` when unlearning destroyed utility
    (non-target accuracy below ``COLLAPSE_FRACTION`` × the corrupted model's, the run's starting point)."""
    recovery, forgetting = m.get("recovery"), m.get("forgetting")
    if recovery is not None and recovery >= RECOVERED_R:
        label = "recovered"
    elif forgetting is not None and forgetting >= FORGOT_F:
        label = "forgot only"
    else:
        label = "neither"
    utility, reference = _utility(m), _utility(corrupted)
    if utility is not None and reference is not None and utility < COLLAPSE_FRACTION * reference:
        label += ", collapsed"
    return label


def report(config, metrics: dict[str, Any]) -> str:
    sizes, clean = metrics["sizes"], metrics["clean"]
    lines = [
        "# RESTOR knowledge recovery on a synthetic knowledge world",
        "",
        f"World: {sizes['people']} people, {sizes['targets']} targets, "
        f"{sizes['target_facts']} corrupted facts; clean corpus {sizes['clean_docs']} documents; "
        f"decoder LM with {sizes['params']:,} parameters "
        f"(vocabulary {sizes['vocab']}).",
        f"θ_clean: Acc_correct on the target facts {_fmt(clean['acc_correct'], 3)}, on non-target people "
        f"{_fmt(clean['acc_nontarget'], 3)}, held-out perplexity {_fmt(clean['heldout_ppl'], 3)}.",
        f"Unlearning budget (every method): {config.unlearn_steps} Adam steps, lr {config.unlearn_lr}, "
        f"batch {config.unlearn_batch_size} D_f documents (+ the same number of retain biographies); "
        f"NPO β = {config.npo_beta}, SimNPO β = {config.simnpo_beta}, δ = {config.simnpo_delta}; "
        f"task vector α = {config.task_vector_alpha}; SSD λ = {config.ssd_lam}, α = "
        f"{'ASSD percentile' if config.ssd_alpha is None else config.ssd_alpha}.",
        "",
        "Columns: Acc = Acc_correct and Rate = Rate_corrupted on the target facts; R = recovery, "
        "F = forgetting; non-target / interleaved = QA accuracy on people not in D_f / whose true facts "
        "are interleaved in D_f; "
        "ppl = held-out perplexity; conf = correlation of θ_clean's per-fact margin with per-fact recovery. "
        "Run names are method/loss mask (doc = whole documents, span = corrupted values only)/"
        "(full = all parameters, ssd_local = updates restricted to SSD's selection).",
        "",
    ]
    header = ["model", "Acc", "Rate", "R", "F", "non-target", "interleaved", "ppl", "conf"]
    for k, entry in metrics["k"].items():
        rate = entry["corrupted"]["rate_corrupted"]
        reached = (
            ""
            if rate >= config.corrupt_target_rate
            else f", target rate {config.corrupt_target_rate} NOT reached"
        )
        lines += [
            f"## k = {k} ({entry['forget_docs']} D_f documents, corrupted in "
            f"{entry['corrupt_epochs']} epochs{reached}; "
            f"SSD α {', '.join(f'{m}: {_fmt(a, 3)}' for m, a in entry['alpha'].items())}; selected fraction "
            f"{', '.join(f'{m}: {_fmt(f, 4)}' for m, f in entry['selected_fraction'].items())})",
            "",
        ]
        rows = [_row("θ_clean", entry["clean"]), _row("θ_corrupted", entry["corrupted"])]
        rows += [_row(name, m) for name, m in entry["runs"].items()]
        lines += [runner.markdown_table(header, rows), ""]
    lines += ["## Localisation ablation (R / F per loss mask and localisation)", ""]
    methods = sorted({name.split("/")[0] for e in metrics["k"].values() for name in e["runs"]})
    ablation = []
    for k, entry in metrics["k"].items():
        for method in methods:
            cells = []
            for variant in VARIANTS:
                m = entry["runs"].get(f"{method}/{variant}")
                cells.append("n/a" if m is None else f"{_fmt(m['recovery'])} / {_fmt(m['forgetting'])}")
            if any(c != "n/a" for c in cells):
                ablation.append([k, method, *cells])
    lines += [runner.markdown_table(["k", "method", *VARIANTS], ablation), ""]
    lines += ["## Logit probe (mean per-token log-prob of the correct / corrupted / a random value)", ""]
    probe_rows = []
    for k, entry in metrics["k"].items():
        named = {"θ_clean": entry["clean"], "θ_corrupted": entry["corrupted"], **entry["runs"]}
        for name, m in named.items():
            p = m["probe"]
            probe_rows.append([k, name, _fmt(p["correct"]), _fmt(p["corrupted"]), _fmt(p["random"])])
    lines += [runner.markdown_table(["k", "model", "correct", "corrupted", "random"], probe_rows), ""]
    lines += [
        f"## Verdicts (measured: recovered ⇔ R ≥ {RECOVERED_R}; forgot only ⇔ F ≥ {FORGOT_F} and R < "
        f"{RECOVERED_R}; collapsed ⇔ non-target accuracy < {COLLAPSE_FRACTION} × θ_corrupted's)",
        "",
    ]
    verdict_rows = []
    for k, entry in metrics["k"].items():
        for method in methods:
            cells = []
            for variant in VARIANTS:
                m = entry["runs"].get(f"{method}/{variant}")
                cells.append("n/a" if m is None else verdict(m, entry["corrupted"]))
            if any(c != "n/a" for c in cells):
                verdict_rows.append([k, method, *cells])
    lines += [runner.markdown_table(["k", "method", *VARIANTS], verdict_rows), ""]
    lines += ["Plots: `recovery_vs_forgetting.png`, `recovery_vs_k.png`.", ""]
    return "\n".join(lines)


def plots(metrics: dict[str, Any], run_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(metrics["k"])
    methods = sorted({name.split("/")[0] for e in metrics["k"].values() for name in e["runs"]})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    markers = dict(zip(VARIANTS, ("o", "s", "^", "D"), strict=True))
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for name, m in metrics["k"][k]["runs"].items():
            method, variant = name.split("/", 1)
            if m["recovery"] is None or m["forgetting"] is None:
                continue
            ax.scatter(m["forgetting"], m["recovery"], color=colours[method], marker=markers[variant], s=36)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"k = {k}")
        ax.set_xlabel("forgetting F")
        ax.set_ylabel("recovery R")
    handles = [plt.Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in methods]
    handles += [plt.Line2D([], [], color="black", marker=markers[v], ls="", label=v) for v in VARIANTS]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "recovery_vs_forgetting.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for method in methods:
        for variant, style in (("doc/full", "-"), ("span/full", "--")):
            values = [metrics["k"][k]["runs"].get(f"{method}/{variant}", {}).get("recovery") for k in ks]
            if all(v is None for v in values):
                continue
            ys = [np.nan if v is None else v for v in values]
            ax.plot(
                [int(k) for k in ks],
                ys,
                style,
                color=colours[method],
                marker="o",
                label=f"{method} {variant}",
            )
    ax.set_xlabel("k (true facts interleaved per D_f document)")
    ax.set_ylabel("recovery R")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "recovery_vs_k.png"), dpi=120)
    plt.close(fig)
