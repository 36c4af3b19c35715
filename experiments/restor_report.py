"""Scores, the Markdown report and the plots of the RESTOR experiment (``restor_recovery``).

Scores of an evaluated model: Acc_correct and Rate_corrupted on the target facts, recovery
R = (Acc_u − Acc_c)/(Acc_clean − Acc_c), forgetting F = 1 − Rate_u/Rate_c, the correlation of θ_clean's
per-fact margin with per-fact recovery, utility (QA accuracy, held-out perplexity) and the logit probe.
Verdicts are measured, with fixed thresholds stated in the report: a run *recovers* when R ≥ 0.25 (a quarter
of the accuracy the corruption destroyed is back), *only forgets* when F ≥ 0.5 and R < 0.25, and *collapses*
when its accuracy on non-target people falls below half of θ_clean's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.report import diverged_line, figure, fmt, markdown_table, scored
from unlearnx.eval import restor

RECOVERED_R = 0.25
FORGOT_F = 0.5
COLLAPSE_FRACTION = 0.5
FLAT = ("acc_correct", "rate_corrupted", "acc_nontarget", "acc_interleaved", "heldout_ppl")
PROBE = ("correct", "corrupted", "random")
SCORES = ("recovery", "forgetting", "confidence_corr")


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able metrics of one evaluated model (no per-fact arrays; a non-finite perplexity is None);
    a diverged model's are all None, with ``"diverged": true``."""
    if result["diverged"]:
        return {**dict.fromkeys(FLAT, None), "probe": dict.fromkeys(PROBE, None), "diverged": True}
    return {
        "acc_correct": result["acc_correct"],
        "rate_corrupted": result["rate_corrupted"],
        "acc_nontarget": result["acc_nontarget"],
        "acc_interleaved": result["acc_interleaved"],
        "heldout_ppl": result["heldout_ppl"] if result["finite"] else None,
        "probe": result["probe"],
        "diverged": False,
    }


def scores(correct: np.ndarray, clean_eval, corrupted_eval, result) -> dict[str, Any]:
    """R, F, the confidence correlation and the :func:`flat` metrics of one evaluated model (``correct``: the
    true value of every target fact; R or F is None where its denominator vanishes)."""
    out = flat(result)
    if result["diverged"] or corrupted_eval["diverged"] or clean_eval["diverged"]:
        return {**out, **dict.fromkeys(SCORES, None)}
    try:
        out["recovery"] = restor.recovery(
            result["acc_correct"], corrupted_eval["acc_correct"], clean_eval["acc_correct"]
        )
    except ValueError:
        out["recovery"] = None
    try:
        out["forgetting"] = restor.forgetting(result["rate_corrupted"], corrupted_eval["rate_corrupted"])
    except ValueError:
        out["forgetting"] = None
    # Confidence vs recovery: over facts the corrupted model got wrong, correlation of θ_clean's margin
    # with whether the unlearned model answers correctly.
    wrong = corrupted_eval["predicted"] != correct
    recovered = (result["predicted"] == correct)[wrong].astype(float)
    margin = clean_eval["margin"][wrong]
    ok = np.isfinite(margin)
    out["confidence_corr"] = (
        float(np.corrcoef(margin[ok], recovered[ok])[0, 1])
        if ok.sum() > 2 and recovered[ok].std() > 0 and margin[ok].std() > 0
        else None
    )
    return out


def diverged(metrics: dict[str, Any]) -> list[str]:
    """The diverged models of a study: ``clean``, ``corrupt_k<k>`` and ``k<k>/<run>``."""
    names = ["clean"] if metrics["clean"]["diverged"] else []
    for k, entry in metrics["k"].items():
        names += [f"corrupt_k{k}"] if entry["corrupted"]["diverged"] else []
        names += [f"k{k}/{name}" for name, m in entry["runs"].items() if m["diverged"]]
    return names


def _row(name: str, m: dict[str, Any]) -> list[str]:
    keys = ("acc_correct", "rate_corrupted", "recovery", "forgetting", "acc_nontarget", "acc_interleaved")
    keys += ("heldout_ppl", "confidence_corr")
    return [name, *(fmt(scored(m.get(key), m["diverged"]), digits=2) for key in keys)]


def _utility(m: dict[str, Any]) -> float | None:
    return m["acc_nontarget"] if m["acc_nontarget"] is not None else m["acc_interleaved"]


def verdict(m: dict[str, Any], corrupted: dict[str, Any]) -> str:
    """``recovered`` / ``forgot only`` / ``neither``, with ``, collapsed`` when unlearning destroyed utility
    (non-target accuracy below ``COLLAPSE_FRACTION`` × the corrupted model's, the run's starting point)."""
    recovery, forgetting = m.get("recovery"), m.get("forgetting")
    if m["diverged"]:
        return "diverged"
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


def _methods(metrics: dict[str, Any]) -> list[str]:
    return sorted({name.split("/")[0] for e in metrics["k"].values() for name in e["runs"]})


def _header(config, metrics: dict[str, Any]) -> list[str]:
    sizes, clean = metrics["sizes"], metrics["clean"]
    return [
        "# RESTOR knowledge recovery on a synthetic knowledge world",
        "",
        f"World: {sizes['people']} people, {sizes['targets']} targets, "
        f"{sizes['target_facts']} corrupted facts; clean corpus {sizes['clean_docs']} documents; "
        f"decoder LM with {sizes['params']:,} parameters "
        f"(vocabulary {sizes['vocab']}).",
        f"θ_clean: Acc_correct on the target facts {fmt(clean['acc_correct'], digits=3)}, on non-target "
        f"people {fmt(clean['acc_nontarget'], digits=3)}, held-out perplexity "
        f"{fmt(clean['heldout_ppl'], digits=3)}.",
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
        "(full = all parameters, ssd_local = updates restricted to SSD's selection, random_local = to as "
        "many parameters drawn at random); n/a = not defined.",
        *diverged_line(metrics["diverged"]),
        "",
    ]


def _k_tables(config, metrics: dict[str, Any]) -> list[str]:
    lines = []
    header = ["model", "Acc", "Rate", "R", "F", "non-target", "interleaved", "ppl", "conf"]
    for k, entry in metrics["k"].items():
        rate = entry["corrupted"]["rate_corrupted"]
        target = config.corrupt_target_rate
        reached = "" if rate >= target else f", target rate {target} NOT reached"
        alphas = ", ".join(f"{m}: {fmt(a, digits=3)}" for m, a in entry["alpha"].items())
        fractions = ", ".join(f"{m}: {fmt(f, digits=4)}" for m, f in entry["selected_fraction"].items())
        lines += [
            f"## k = {k} ({entry['forget_docs']} D_f documents, corrupted in {entry['corrupt_epochs']} "
            f"epochs{reached}; SSD α {alphas}; selected fraction {fractions})",
            "",
        ]
        rows = [_row("θ_clean", entry["clean"]), _row("θ_corrupted", entry["corrupted"])]
        rows += [_row(name, m) for name, m in entry["runs"].items()]
        lines += [markdown_table(header, rows), ""]
    return lines


def _variant_grid(metrics: dict[str, Any], variants, cell) -> str:
    """One row per (k, method) and one column per variant, ``cell(run, corrupted)`` in each (n/a: not run)."""
    rows = []
    for k, entry in metrics["k"].items():
        for method in _methods(metrics):
            cells = []
            for variant in variants:
                m = entry["runs"].get(f"{method}/{variant}")
                cells.append("n/a" if m is None else cell(m, entry["corrupted"]))
            if any(c != "n/a" for c in cells):
                rows.append([k, method, *cells])
    return markdown_table(["k", "method", *variants], rows)


def _localisation_table(metrics: dict[str, Any], variants) -> list[str]:
    """One row per (k, method, variant) of the gradient methods: the scores beside how far θ_u moved from
    θ_c (‖θ_u − θ_c‖/‖θ_c‖ and the % of parameters changed), so an unmoved model is visible."""
    rows = []
    keys = ("acc_correct", "rate_corrupted", "recovery", "forgetting", "acc_nontarget")
    for k, entry in metrics["k"].items():
        for method in _methods(metrics):
            for variant in variants:
                m = entry["runs"].get(f"{method}/{variant}")
                if m is None or method == "ssd":
                    continue
                change, changed = m.get("param_change"), m.get("changed_fraction")
                rows.append(
                    [k, method, variant, *(fmt(scored(m.get(key), m["diverged"]), digits=2) for key in keys)]
                    + [fmt(change, digits=3), fmt(None if changed is None else 100 * changed, digits=1)]
                )
    header = ["k", "method", "variant", "Acc", "Rate", "R", "F", "non-target", "‖Δθ‖/‖θ_c‖", "changed %"]
    counts = "; ".join(
        f"k = {k}: " + ", ".join(f"{mask} {n:,}" for mask, n in e.get("selected_count", {}).items())
        for k, e in metrics["k"].items()
    )
    return [
        "## Localisation: how far each run moved",
        "",
        f"Parameters SSD selects ({counts}); random_local updates as many, drawn uniformly at random.",
        "",
        markdown_table(header, rows),
        "",
    ]


def report(config, metrics: dict[str, Any], variants) -> str:
    """The Markdown report; ``variants`` are the ``mask/(full | ssd_local | random_local)`` columns of the
    ablation."""
    lines = _header(config, metrics) + _k_tables(config, metrics)
    ablation = _variant_grid(
        metrics, variants, lambda m, _: f"{fmt(m['recovery'], digits=2)} / {fmt(m['forgetting'], digits=2)}"
    )
    lines += ["## Localisation ablation (R / F per loss mask and localisation)", "", ablation, ""]
    if len(config.localize) > 1:
        lines += _localisation_table(metrics, variants)
    lines += ["## Logit probe (mean per-token log-prob of the correct / corrupted / a random value)", ""]
    probe_rows = []
    for k, entry in metrics["k"].items():
        named = {"θ_clean": entry["clean"], "θ_corrupted": entry["corrupted"], **entry["runs"]}
        for name, m in named.items():
            probe_rows.append(
                [k, name, *(fmt(scored(m["probe"][key], m["diverged"]), digits=2) for key in PROBE)]
            )
    lines += [markdown_table(["k", "model", "correct", "corrupted", "random"], probe_rows), ""]
    lines += [
        f"## Verdicts (measured: recovered ⇔ R ≥ {RECOVERED_R}; forgot only ⇔ F ≥ {FORGOT_F} and R < "
        f"{RECOVERED_R}; collapsed ⇔ non-target accuracy < {COLLAPSE_FRACTION} × θ_corrupted's)",
        "",
        _variant_grid(metrics, variants, verdict),
        "",
        "Plots: `recovery_vs_forgetting.png`, `recovery_vs_k.png`.",
        "",
    ]
    return "\n".join(lines)


def plots(metrics: dict[str, Any], run_dir: str, variants) -> None:
    """``recovery_vs_forgetting.png`` (R against F of every run, one panel per k) and ``recovery_vs_k.png``
    (R of the unlocalised runs against k)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    ks, methods = list(metrics["k"]), _methods(metrics)
    colours = {m: colormaps["tab10"](i % 10) for i, m in enumerate(methods)}
    markers = dict(zip(variants, ("o", "s", "^", "D", "v", "P"), strict=False))
    with figure(
        run_dir, "recovery_vs_forgetting.png", ncols=len(ks), figsize=(4.2 * len(ks), 4), squeeze=False
    ) as (_, axes):
        for ax, k in zip(axes[0], ks, strict=True):
            for name, m in metrics["k"][k]["runs"].items():
                method, variant = name.split("/", 1)
                if m["recovery"] is not None and m["forgetting"] is not None:
                    ax.scatter(
                        m["forgetting"], m["recovery"], color=colours[method], marker=markers[variant], s=36
                    )
            ax.axhline(0, color="grey", lw=0.6)
            ax.set(title=f"k = {k}", xlabel="forgetting F", ylabel="recovery R")
        handles = [Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in methods]
        handles += [Line2D([], [], color="black", marker=markers[v], ls="", label=v) for v in variants]
        axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    with figure(run_dir, "recovery_vs_k.png", figsize=(5, 4)) as (_, ax):
        for method in methods:
            for variant, style in (("doc/full", "-"), ("span/full", "--")):
                values = [metrics["k"][k]["runs"].get(f"{method}/{variant}", {}).get("recovery") for k in ks]
                if any(v is not None for v in values):
                    ys = [np.nan if v is None else v for v in values]
                    ax.plot(
                        [int(k) for k in ks],
                        ys,
                        style,
                        color=colours[method],
                        marker="o",
                        label=f"{method} {variant}",
                    )
        ax.set(xlabel="k (true facts interleaved per D_f document)", ylabel="recovery R")
        ax.legend(fontsize=6)
