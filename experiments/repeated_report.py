"""Summaries, the Markdown report and the plots of the repeated-data study (``repeated_data``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from experiments.report import diverged_line, figure, fmt, markdown_table, mean_std_plot, scored, stat
from unlearnx.eval import scaling

PER_RUN = ("test_loss", "icl", "copying_loss")
CURVES_AND_MAPS = ("prefix_matching", "test_curve", "repeated_curve", "ov_copying", "diverged")


def _label(family: dict[str, Any]) -> str:
    return f"attn-only {family['size']}" if family["attention_only"] else family["size"]


def max_rise(curve: np.ndarray) -> float:
    """The largest rise of a loss curve above its running minimum (0 for a non-increasing curve)."""
    curve = np.asarray(curve, np.float64)
    curve = curve[np.isfinite(curve)]
    if curve.size == 0:
        return float("nan")
    return float(np.max(curve - np.minimum.accumulate(curve)))


def settings(runs: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """Distinct (f, E) in run order."""
    return list(dict.fromkeys((run["fraction"], run["epochs"]) for run in runs))


def _setting_entry(family: dict[str, Any], index: list[int], fraction: float, epochs: int) -> dict[str, Any]:
    """One (f, E) of one size: mean ± std over its seeds' runs ``index``."""
    entry = {"fraction": fraction, "epochs": epochs}
    diverged = family["diverged"][index]
    keys = (*PER_RUN, "span_copying_loss") if "span_copying_loss" in family else PER_RUN
    entry.update({key: stat(map(scored, family[key][index], diverged)) for key in keys})
    entry["repeated_loss"] = stat(family["repeated_curve"][index, -1])
    entry["bump"] = stat(max_rise(family["test_curve"][i]) for i in index)
    entry["prefix_matching"] = family["prefix_matching"][index].mean(axis=0)
    entry["prefix_matching_max"] = stat(family["prefix_matching"][index].max(axis=(1, 2)))
    entry["test_curve"] = np.nanmean(family["test_curve"][index], axis=0)
    entry["repeated_curve"] = np.nanmean(family["repeated_curve"][index], axis=0) if fraction > 0 else None
    if "ov_copying" in family:
        entry["ov_copying"] = family["ov_copying"][index].mean(axis=0)
        entry["ov_copying_max"] = stat(family["ov_copying"][index].max(axis=(1, 2)))
    return entry


def _size_summary(family: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_setting = []
    for fraction, epochs in settings(runs):
        index = [i for i, r in enumerate(runs) if (r["fraction"], r["epochs"]) == (fraction, epochs)]
        per_setting.append(_setting_entry(family, index, fraction, epochs))
    return {
        "non_embedding_params": family["non_embedding_params"],
        "attention_only": family["attention_only"],
        "eval_steps": family["eval_steps"],
        "settings": per_setting,
        "per_run": {
            key: family[key] for key in (*PER_RUN, "span_copying_loss", *CURVES_AND_MAPS) if key in family
        },
    }


def _fit_and_peaks(config, lm: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The f = 0 power-law fit (adds N_eff to every setting of ``lm`` in place) and the worst E per size."""
    fit_entry: dict[str, Any]
    try:
        fit = scaling.fit_power_law(
            [size["non_embedding_params"] for size in lm.values()],
            [size["settings"][0]["test_loss"]["mean"] for size in lm.values()],
        )
        fit_entry = fit._asdict()
    except ValueError as error:
        fit, fit_entry = None, {"error": str(error)}
    peaks = {}
    for label, size in lm.items():
        for entry in size["settings"]:
            if fit is not None:
                n_eff = scaling.effective_params(fit, entry["test_loss"]["mean"])
                entry["n_eff"], entry["n_eff_status"] = n_eff.value, n_eff.status
                entry["n_eff_ratio"] = n_eff.value / size["non_embedding_params"]
        reference = size["settings"][0]["test_loss"]
        main = [e for e in size["settings"] if e["fraction"] == config.fraction]
        if main:
            worst = max(main, key=lambda e: e["test_loss"]["mean"])
            epochs = [e["epochs"] for e in main]
            peaks[label] = {
                "worst_epochs": worst["epochs"],
                "excess_over_unique": worst["test_loss"]["mean"] - reference["mean"],
                "interior": min(epochs) < worst["epochs"] < max(epochs),
                "unique_std": reference["std"],
                "worst_std": worst["test_loss"]["std"],
            }
    return fit_entry, peaks


def summarise(config, runs, families, linear, corpus) -> dict[str, Any]:
    """``metrics.json``: per size the per-run values and per-(f, E) mean ± std over seeds, the f = 0 power-law
    fit with N_eff / N per setting, the measured peak per size, and the linear-regression sweep."""
    sizes = {_label(family): _size_summary(family, runs) for family in families}
    fit_entry, peaks = _fit_and_peaks(
        config, {label: size for label, size in sizes.items() if not size["attention_only"]}
    )
    mse = linear["test_mse"]
    linear_summary = {
        "epochs": linear["epochs"],
        "repeated_rows": linear["repeated_rows"],
        "test_mse_mean": mse.mean(axis=1),
        "test_mse_sem": mse.std(axis=1) / math.sqrt(mse.shape[1]),
        "curve_epochs": linear["curve_epochs"],
        "curve_steps": linear["curve_steps"],
        "curves_mean": linear["curves"].mean(axis=1),
        "seeds": mse.shape[1],
    }
    diverged = [f"{_label(f)} f={r['fraction']:g} E={r['epochs']} seed {r['seed']}"
                for f in families for r, bad in zip(runs, f["diverged"], strict=True) if bad]  # fmt: skip
    return {
        "diverged": diverged,
        "corpus": corpus,
        "runs": runs,
        "sizes": sizes,
        "fit": fit_entry,
        "peaks": peaks,
        "linear": linear_summary,
    }


def _ratio(entry: dict[str, Any]) -> str:
    if "n_eff_ratio" not in entry:
        return "n/a"
    status = entry["n_eff_status"]
    if status == "undefined":
        return "∞ (L ≤ L∞)"
    mark = {"ok": "", "below_range": " (below fit)", "above_range": " (above fit)"}[status]
    return f"{entry['n_eff_ratio']:.2f}{mark}"


def _table(
    metrics, config, value, *, digits: int = 3, main_only: bool = True, attention_only: bool = False
) -> str:
    """Sizes × settings (f = 0 and the E sweep, or the f sweep); ``value`` is a setting entry's key (shown
    as mean ± std) or a function of the entry."""
    cell = value if callable(value) else (lambda entry: fmt(entry[value], digits=digits))
    chosen = [(0.0, 1)] + (
        [(config.fraction, e) for e in config.repeat_epochs]
        if main_only
        else [(f, config.sweep_epochs) for f in config.sweep_fractions]
    )
    header = ["size", "N (non-emb.)", *(("f = 0" if f == 0 else f"f={f:g}, E={e}") for f, e in chosen)]
    rows = []
    for label, size in metrics["sizes"].items():
        if size["attention_only"] != attention_only:
            continue
        by_key = {(e["fraction"], e["epochs"]): e for e in size["settings"]}
        rows.append([label, f"{size['non_embedding_params']:,}", *(cell(by_key[key]) for key in chosen)])
    return markdown_table(header, rows)


def _intro(config, metrics: dict[str, Any]) -> list[str]:
    corpus = metrics["corpus"]
    budget = config.steps * config.batch_size * config.seq_len
    return [
        "# Repeated data: test loss, effective size and induction heads vs repeat epochs",
        "",
        f"Corpus `{config.dataset}` (Python {corpus.get('python_version')}, sha256 "
        f"{str(corpus.get('content_sha256'))[:12]}…, {corpus.get('train_tokens'):,} train / "
        f"{corpus.get('test_tokens'):,} held-out bytes). Budget D = {budget:,} tokens "
        f"({config.steps} steps × {config.batch_size} × {config.seq_len}), one pass; repeated fraction "
        f"f = {config.fraction:g} with E ∈ {list(config.repeat_epochs)}, fraction sweep "
        f"{list(config.sweep_fractions)} at E = {config.sweep_epochs}; seeds {list(config.seeds)}. "
        f"AdamW {config.lr:g} (warm-up {config.warmup_steps}, cosine), weight decay {config.weight_decay:g}. "
        "Losses in nats per byte, mean ± std over seeds. Not tuned.",
        "",
        f"## Final held-out test loss, f = {config.fraction:g} (f = 0: unique-data reference)",
        "",
        _table(metrics, config, "test_loss"),
        "",
    ]


def _fit_and_peak_lines(config, metrics: dict[str, Any]) -> list[str]:
    fit = metrics["fit"]
    if "error" in fit:
        lines = [f"Scaling fit failed: {fit['error']}", ""]
    else:
        lines = [
            f"Unique-data fit L(N) = {fit['a']:.4g}·N^(−{fit['alpha']:.4g}) + {fit['l_inf']:.4g} "
            f"(rss {fit['rss']:.2g}; sizes {fit['n_min']:,.0f}–{fit['n_max']:,.0f}).",
            "",
            "## Effective size N_eff / N",
            "",
            _table(metrics, config, _ratio),
            "",
        ]
    lines += ["## Degradation peak over E (as measured)", ""]
    for label, peak in metrics["peaks"].items():
        where = "interior E" if peak["interior"] else "an end of the E range"
        lines.append(
            f"- {label}: worst E = {peak['worst_epochs']} ({where}), "
            f"test loss {peak['excess_over_unique']:+.4f} vs f = 0 (seed std {peak['unique_std']:.4f} / "
            f"{peak['worst_std']:.4f})"
        )
    return lines


def _measurement_lines(config, metrics: dict[str, Any]) -> list[str]:
    half = config.seq_len // 2
    sections = [
        ("## Repeated-subset loss at the end", "repeated_loss", {}),
        (
            "## Mid-training bump: largest rise of the test-loss curve above its running minimum",
            "bump",
            {"digits": 4},
        ),
        (
            f"## Fraction sweep at E = {config.sweep_epochs}: final test loss",
            "test_loss",
            {"main_only": False},
        ),
        (f"## Copying loss (second copy of {half}-byte held-out segments)", "copying_loss", {}),
        (
            f"## ICL score (loss over positions {list(config.icl_late)} − over {list(config.icl_early)})",
            "icl",
            {},
        ),
        (
            f"## Max prefix-matching score over heads (random bytes, ℓ = {half}, twice)",
            "prefix_matching_max",
            {},
        ),
    ]
    if any(size["attention_only"] for size in metrics["sizes"].values()):
        sections += [
            ("## Attention-only models\n\nFinal test loss:", "test_loss", {"attention_only": True}),
            ("Max prefix-matching score:", "prefix_matching_max", {"attention_only": True}),
            ("Max OV copying score Σλ/Σ|λ| over heads:", "ov_copying_max", {"attention_only": True}),
        ]
    lines = [""]
    for title, key, options in sections:
        lines += [title, "", _table(metrics, config, key, **options), ""]
    return lines


def _linear_lines(metrics: dict[str, Any], timing: dict[str, Any]) -> list[str]:
    linear = metrics["linear"]
    columns = (linear[key] for key in ("epochs", "repeated_rows", "test_mse_mean", "test_mse_sem"))
    rows = [[int(e), int(m), f"{mean:.4f} ± {sem:.4f}"] for e, m, mean, sem in zip(*columns, strict=True)]
    return [
        f"## Duplicated-row linear regression (test MSE, mean ± s.e.m. over {linear['seeds']} seeds)",
        "",
        markdown_table(["E", "repeated rows m", "test MSE"], rows),
        "",
        f"Wall time: {timing['total']:.1f} s on {timing['devices']} device(s).",
        "",
    ]


def report(config, metrics: dict[str, Any], timing: dict[str, Any]) -> str:
    """``report.md``: the paper's tables (test loss, N_eff / N, peaks, probes) and the linear companion."""
    lines = _intro(config, metrics) + diverged_line(metrics["diverged"])
    lines += _fit_and_peak_lines(config, metrics)
    lines += _measurement_lines(config, metrics) + _linear_lines(metrics, timing)
    return "\n".join(lines)


def _main_entries(config, size: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in size["settings"] if e["fraction"] == config.fraction]


def _against_epochs(ax, config, sizes: dict[str, Any], key: str) -> None:
    """``key`` (mean ± std over seeds) against E at f = ``config.fraction``, one line per size, and the size's
    f = 0 value dashed, on a log E axis."""
    for i, (label, size) in enumerate(sizes.items()):
        entries = _main_entries(config, size)
        epochs, stats = [e["epochs"] for e in entries], [e[key] for e in entries]
        mean_std_plot(ax.errorbar, epochs, stats, marker="o", color=f"C{i}", label=label)
        ax.axhline(size["settings"][0][key]["mean"], color=f"C{i}", linestyle="--", linewidth=1)
    ax.set_xscale("log")


def _plot_test_loss(config, sizes: dict[str, Any], run_dir: str) -> None:
    with figure(run_dir, "test_loss_vs_epochs.png", figsize=(6.5, 4.5)) as (fig, ax):
        _against_epochs(ax, config, sizes, "test_loss")
        ax.set_xlabel(f"repeat epochs E (f = {config.fraction:g})")
        ax.set_ylabel("final test loss (nats/byte); dashed: f = 0")
        ax.legend(fontsize="small")


def _plot_training_curves(config, sizes: dict[str, Any], run_dir: str) -> None:
    shape = dict(ncols=len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False)
    with figure(run_dir, "training_curves.png", dpi=110, **shape) as (fig, axes):
        for ax, (label, size) in zip(axes[0], sizes.items(), strict=True):
            steps = size["eval_steps"]
            for i, entry in enumerate([size["settings"][0], *_main_entries(config, size)]):
                name = "f = 0" if entry["fraction"] == 0 else f"E = {entry['epochs']}"
                ax.plot(steps, entry["test_curve"], color=f"C{i}", marker=".", label=f"{name} test")
                if entry["repeated_curve"] is not None:
                    ax.plot(
                        steps, entry["repeated_curve"], color=f"C{i}", linestyle=":", label=f"{name} repeated"
                    )
            ax.set_xscale("log")
            ax.set_title(label, fontsize="small")
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("loss (solid: held-out test, dotted: repeated subset)")
        axes[0][0].legend(fontsize="x-small", ncol=2)


def _plot_effective_size(config, sizes: dict[str, Any], run_dir: str) -> None:
    with figure(run_dir, "effective_size.png", figsize=(6.5, 4.5)) as (fig, ax):
        for label, size in sizes.items():
            if size["attention_only"]:
                continue
            entries = [
                e for e in _main_entries(config, size) if e.get("n_eff_status") not in (None, "undefined")
            ]
            ax.plot(
                [e["epochs"] for e in entries], [e["n_eff_ratio"] for e in entries], marker="o", label=label
            )
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"repeat epochs E (f = {config.fraction:g})")
        ax.set_ylabel("N_eff / N (from the f = 0 fit)")
        ax.legend(fontsize="small")


def _plot_prefix_matching(config, sizes: dict[str, Any], run_dir: str) -> None:
    # a colour-bar column of the grid per row, so that tight_layout can place it
    shape = dict(nrows=len(sizes), ncols=3, figsize=(7.4, 2.2 * len(sizes) + 0.8), squeeze=False)
    with figure(
        run_dir, "prefix_matching.png", dpi=110, gridspec_kw={"width_ratios": [1, 1, 0.05]}, **shape
    ) as (fig, axes):
        for row, (label, size) in enumerate(sizes.items()):
            unique = size["settings"][0]
            worst = max(_main_entries(config, size), key=lambda e: e["test_loss"]["mean"])
            for ax, entry, name in (
                (axes[row][0], unique, "f = 0"),
                (axes[row][1], worst, f"E = {worst['epochs']} (worst)"),
            ):
                image = ax.imshow(np.asarray(entry["prefix_matching"]), vmin=0, vmax=1, cmap="magma")
                ax.set_title(f"{label}: {name}", fontsize="small")
                ax.set_xlabel("head")
                ax.set_ylabel("layer")
            fig.colorbar(image, cax=axes[row][2], label="prefix-matching score")


def _plot_copying_icl(config, sizes: dict[str, Any], run_dir: str) -> None:
    with figure(run_dir, "copying_icl.png", ncols=2, figsize=(11, 4.2)) as (fig, (left, right)):
        for ax, key, name in (
            (left, "copying_loss", "copying loss (second copy)"),
            (right, "icl", "ICL score (late − early loss)"),
        ):
            _against_epochs(ax, config, sizes, key)
            ax.set_xlabel(f"repeat epochs E (f = {config.fraction:g}); dashed: f = 0")
            ax.set_ylabel(name)
        left.legend(fontsize="small")


def _plot_linear(linear: dict[str, Any], run_dir: str) -> None:
    with figure(run_dir, "linear_regression.png", ncols=2, figsize=(11, 4.2)) as (fig, (left, right)):
        left.errorbar(
            linear["epochs"], linear["test_mse_mean"], yerr=linear["test_mse_sem"], marker="o", capsize=3
        )
        left.set_xscale("log")
        left.set_xlabel("repeat epochs E")
        left.set_ylabel(f"test MSE (mean ± s.e.m., {linear['seeds']} seeds)")
        for epochs_value, curve in zip(linear["curve_epochs"], linear["curves_mean"], strict=True):
            right.plot(linear["curve_steps"], curve, label=f"E = {int(epochs_value)}")
        right.set_xscale("log")
        right.set_xlabel("gradient-descent step")
        right.set_ylabel("test MSE")
        right.legend(fontsize="small")


def plot(config, metrics: dict[str, Any], run_dir: str) -> None:
    """``test_loss_vs_epochs.png``, ``training_curves.png``, ``effective_size.png``, ``prefix_matching.png``,
    ``copying_icl.png`` and ``linear_regression.png``."""
    sizes = metrics["sizes"]
    _plot_test_loss(config, sizes, run_dir)
    _plot_training_curves(config, sizes, run_dir)
    _plot_effective_size(config, sizes, run_dir)
    _plot_prefix_matching(config, sizes, run_dir)
    _plot_copying_icl(config, sizes, run_dir)
    _plot_linear(metrics["linear"], run_dir)
